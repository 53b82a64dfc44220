from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data in ../shared/data (books, bAbI files); tests that need it skip with a reason if absent."""
    if not (SHARED_DATA / "books").is_dir() or not (SHARED_DATA / "babi").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the project root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def books(shared_data) -> list[Path]:
    return sorted((shared_data / "books").glob("*.txt"))


@pytest.fixture(scope="session")
def babi_dir(shared_data) -> Path:
    return shared_data / "babi"
