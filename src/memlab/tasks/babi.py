"""bAbI tasks qa1-qa5: a reader/writer for the original file format and a small world simulation.

Original format: one sentence a line, numbered; numbering restarts at 1 for a new story. A question
line is `N question?<TAB>answer<TAB>supporting line numbers`.

The generator simulates people who move between places, pick up, drop and give objects (objects move
with their holder). Every answer and supporting fact is read off the simulated world state, so it is
correct by construction. Vocabulary and templates follow the original tasks:

    qa1 single supporting fact   "Mary moved to the bathroom."            "Where is Mary?"
    qa2 two supporting facts     "Mary got the football there."           "Where is the football?"
    qa3 three supporting facts   (same world)                             "Where was the football before the kitchen?"
    qa4 two-arg relations        "The office is north of the bedroom."    "What is north of the bedroom?"
    qa5 three-arg relations      "Fred gave the milk to Bill."            "Who gave the milk to Bill?" (and 4 more forms)
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

TASKS = (1, 2, 3, 4, 5)
TASK_NAMES = {
    1: "single-supporting-fact",
    2: "two-supporting-facts",
    3: "three-supporting-facts",
    4: "two-arg-relations",
    5: "three-arg-relations",
}

PEOPLE = ("Mary", "John", "Daniel", "Sandra")  # qa1-qa3
PEOPLE_QA5 = ("Fred", "Bill", "Jeff", "Mary")
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GET_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

STORY_QUESTIONS = {1: 5, 2: 5, 3: 5, 4: 1, 5: 5}  # questions per story, as in the original files
MIN_FACTS = {1: 1, 2: 2, 3: 3, 4: 2, 5: 3}  # smallest story that can hold one question


@dataclass(frozen=True)
class Question:
    facts: tuple[str, ...]  # the story's non-question sentences up to this question, in order
    question: str  # e.g. 'Where is Mary?'
    answer: str  # a single word
    supporting: tuple[int, ...]  # indices into `facts` of the supporting facts
    task: int  # 1..5


def state_questions(question: Question) -> list[tuple[str, str]]:
    """Every question the story's state answers at this point, as (question, answer). qa1: "Where is P?" for
    each person moved so far, in order of first mention. qa2: the same for people, then "Where is the O?" for
    each object whose place is known (where its holder is, or where it was dropped). Training uses them as extra
    supervision (the state must hold every person's and object's place, not only the asked one); the facts are
    read back from their words, so generated and original stories give the same questions. Other tasks: []."""
    if question.task not in (1, 2):
        return []
    where: dict[str, str] = {}  # person -> place
    holder: dict[str, str] = {}  # object -> person
    floor: dict[str, str | None] = {}  # object -> place it was dropped (None: its dropper's place was unknown)
    for fact in question.facts:
        words = fact.rstrip(".").split()
        person, rest = words[0], " ".join(words[1:])
        if any(rest.startswith(v + " the ") for v in MOVE_VERBS):
            where[person] = words[-1]
        elif any(rest.startswith(v + " the ") for v in GET_VERBS + DROP_VERBS):
            obj = words[words.index("the") + 1]
            if any(rest.startswith(v + " the ") for v in GET_VERBS):
                holder[obj] = person
                floor.pop(obj, None)
            else:
                holder.pop(obj, None)
                floor[obj] = where.get(person)
        else:
            raise ValueError(f"state_questions: qa{question.task} fact {fact!r} is neither a move, a get nor a drop")
    out = [(f"Where is {p}?", place) for p, place in where.items()]
    for obj in sorted(set(holder) | set(floor)):
        place = where.get(holder[obj]) if obj in holder else floor[obj]
        if place is not None:
            out.append((f"Where is the {obj}?", place))
    return out


# ----------------------------------------------------------------------------- reading / writing

_LINE = re.compile(r"^(\d+) (.*)$")


def parse_babi(text: str, task: int = 0, source: str = "<text>") -> list[Question]:
    """Parse bAbI text (original format). `source` names the file in error messages."""
    out: list[Question] = []
    facts: list[str] = []
    line_to_fact: dict[int, int] = {}
    prev = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip("\r\n")
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"{source}, line {lineno}: expected 'N sentence' (a line number, a space, text), got {raw!r}")
        n, rest = int(m.group(1)), m.group(2)
        if n == 1:
            facts, line_to_fact = [], {}
        elif n != prev + 1:
            raise ValueError(f"{source}, line {lineno}: line number {n} follows {prev}; numbers must count up by 1 and restart at 1 for a new story")
        prev = n
        if "\t" in rest:
            parts = rest.split("\t")
            if len(parts) != 3:
                raise ValueError(f"{source}, line {lineno}: a question line needs 'question?<TAB>answer<TAB>supporting line numbers', got {raw!r}")
            q, answer, sup = parts[0].strip(), parts[1].strip(), parts[2].split()
            if not q or not answer or not sup:
                raise ValueError(f"{source}, line {lineno}: empty question, answer or supporting line numbers in {raw!r}")
            supporting = []
            for s in sup:
                if not s.isdigit() or int(s) not in line_to_fact:
                    raise ValueError(f"{source}, line {lineno}: supporting line {s!r} is not a fact line of this story (fact lines: {sorted(line_to_fact)})")
                supporting.append(line_to_fact[int(s)])
            out.append(Question(tuple(facts), q, answer, tuple(supporting), task))
        else:
            line_to_fact[n] = len(facts)
            facts.append(rest.strip())
    return out


def _task_from_name(path: Path) -> int:
    m = re.match(r"qa(\d+)_", path.name)
    return int(m.group(1)) if m else 0


def read_babi(path, task: int | None = None) -> list[Question]:
    """Read an original-format bAbI file; the task number comes from the name (qaN_...) unless given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bAbI file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    return parse_babi(text, task if task is not None else _task_from_name(path), str(path))


def read_babi_dir(directory, task: int, split: str = "train") -> list[Question]:
    """Read `qa{task}_*_{split}.txt` from a directory of original bAbI files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"bAbI directory {directory} does not exist")
    matches = sorted(directory.glob(f"qa{task}_*_{split}.txt"))
    if not matches:
        there = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"no file qa{task}_*_{split}.txt in {directory}; it holds: {there or 'nothing'}")
    if len(matches) > 1:
        raise ValueError(f"several files match qa{task}_*_{split}.txt in {directory}: {[p.name for p in matches]}")
    return read_babi(matches[0], task)


def format_babi(questions: list[Question]) -> str:
    """Write questions in the original format. Consecutive questions whose facts extend the previous
    question's facts share one story (as in the original files); others start a new story."""
    lines: list[str] = []
    story: tuple[str, ...] | None = None
    line_of_fact: list[int] = []
    n = 0
    for q in questions:
        if story is None or q.facts[: len(story)] != story:
            story, line_of_fact, n = (), [], 0
        for f in q.facts[len(story):]:
            n += 1
            line_of_fact.append(n)
            lines.append(f"{n} {f}")
        story = q.facts
        n += 1
        sup = " ".join(str(line_of_fact[i]) for i in q.supporting)
        lines.append(f"{n} {q.question}\t{q.answer}\t{sup}")
    return "\n".join(lines) + ("\n" if lines else "")


# ----------------------------------------------------------------------------- vocabulary


def task_words(task: int) -> list[str]:
    """The lowercased vocabulary of a task: every token the generator (and the original files) can emit."""
    from memlab.tasks.text import tokenize_words

    _check_task(task)
    people = PEOPLE_QA5 if task == 5 else PEOPLE
    phrases = [". ?", "the"]
    if task == 4:
        phrases += ["is of what", *OPPOSITE, *PLACES]
    else:
        phrases += [*people, *PLACES, *MOVE_VERBS, "where is"]
        if task in (2, 3, 5):
            phrases += [*OBJECTS, *GET_VERBS, *DROP_VERBS, "there"]
        if task == 3:
            phrases += ["where was before"]
        if task == 5:
            phrases += [*GIVE_VERBS, "who what did give received"]
    words: list[str] = []
    for p in phrases:
        for w in tokenize_words(p):
            if w not in words:
                words.append(w)
    return words


def _check_task(task: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown bAbI task {task!r}; known tasks: qa1..qa5 ({', '.join(f'{t}={n}' for t, n in TASK_NAMES.items())})")


# ----------------------------------------------------------------------------- world simulation


class _World:
    """People, places and objects of one story; each step appends one fact."""

    def __init__(self, task: int, rng: random.Random):
        self.task, self.rng = task, rng
        self.people = PEOPLE_QA5 if task == 5 else PEOPLE
        self.facts: list[str] = []
        self.loc: dict[str, tuple[str, int]] = {}  # person -> (place, fact that put them there)
        self.holder: dict[str, str] = {}  # object -> person holding it
        self.floor: dict[str, tuple[str, int]] = {}  # object -> (place, the dropper's move fact) when dropped
        self.event: dict[str, int] = {}  # object -> last fact that picked it up / dropped / gave it
        self.trail: dict[str, list[tuple[str, int, int]]] = {o: [] for o in OBJECTS}  # object -> places it has been: (place, fact that brought it there, fact that had it in hand)
        self.gives: list[tuple[str, str, str, int]] = []  # (giver, object, receiver, fact)

    def _add(self, fact: str) -> int:
        self.facts.append(fact)
        return len(self.facts) - 1

    # actions ---------------------------------------------------------------
    def move(self, p: str) -> None:
        cur = self.loc.get(p, (None, -1))[0]
        place = self.rng.choice([x for x in PLACES if x != cur])
        i = self._add(f"{p} {self.rng.choice(MOVE_VERBS)} the {place}.")
        self.loc[p] = (place, i)
        for o, h in self.holder.items():
            if h == p:
                self.trail[o].append((place, i, self.event[o]))

    def can_get(self) -> list[tuple[str, str]]:
        out = []
        for p in self.people:
            if p not in self.loc:
                continue
            for o in OBJECTS:
                if o in self.holder:
                    continue
                if o not in self.floor or self.floor[o][0] == self.loc[p][0]:
                    out.append((p, o))
        return out

    def get(self, p: str, o: str) -> None:
        there = " there" if self.task != 3 or self.rng.random() < 0.2 else ""
        i = self._add(f"{p} {self.rng.choice(GET_VERBS)} the {o}{there}.")
        self.holder[o] = p
        self.floor.pop(o, None)
        self.event[o] = i
        if not self.trail[o]:
            self.trail[o].append((*self.loc[p], i))

    def drop(self, p: str, o: str) -> None:
        there = " there" if self.rng.random() < 0.2 else ""
        i = self._add(f"{p} {self.rng.choice(DROP_VERBS)} the {o}{there}.")
        del self.holder[o]
        self.floor[o] = self.loc[p]
        self.event[o] = i

    def can_give(self) -> list[tuple[str, str, str]]:
        out = []
        for o, p in sorted(self.holder.items()):
            for q in self.people:
                if q != p and (q not in self.loc or self.loc[q][0] == self.loc[p][0]):
                    out.append((p, o, q))
        return out

    def give(self, p: str, o: str, q: str) -> None:
        i = self._add(f"{p} {self.rng.choice(GIVE_VERBS)} the {o} to {q}.")
        self.holder[o] = q
        self.event[o] = i
        if q not in self.loc:  # the receiver was not mentioned before: they are where the giver is
            self.loc[q] = (self.loc[p][0], i)
        self.gives.append((p, o, q, i))

    def step(self) -> None:
        rng = self.rng
        if self.task == 1:
            self.move(rng.choice(self.people))
            return
        gets, gives = self.can_get(), (self.can_give() if self.task == 5 else [])
        drops = sorted((p, o) for o, p in self.holder.items())
        options = [("move", 0.55 if self.task != 5 else 0.45)]
        if gets:
            options.append(("get", 0.25 if self.task != 5 else 0.2))
        if drops:
            options.append(("drop", 0.2 if self.task != 5 else 0.12))
        if gives:
            options.append(("give", 0.35))
        kind = rng.choices([k for k, _ in options], [w for _, w in options])[0]
        if kind == "get":
            self.get(*rng.choice(gets))
        elif kind == "drop":
            self.drop(*rng.choice(drops))
        elif kind == "give":
            self.give(*rng.choice(gives))
        else:
            self.move(rng.choice(self.people))

    # questions -------------------------------------------------------------
    def ask(self) -> tuple[str, str, tuple[int, ...]] | None:
        """A question about the current state (question, answer, supporting), or None if none can be asked."""
        rng = self.rng
        if self.task == 1:
            p = rng.choice(sorted(self.loc))
            place, i = self.loc[p]
            return f"Where is {p}?", place, (i,)
        if self.task == 2:
            cands = []
            for o in OBJECTS:
                if o in self.holder and self.holder[o] in self.loc:
                    place, i = self.loc[self.holder[o]]
                    cands.append((o, place, (self.event[o], i)))
                elif o in self.floor:
                    place, i = self.floor[o]
                    cands.append((o, place, (self.event[o], i)))
            if not cands:
                return None
            o, place, sup = rng.choice(cands)
            return f"Where is the {o}?", place, sup
        if self.task == 3:
            # "Where was the O before the X?": the place the object was in before its last arrival at X
            cands = []
            for o in OBJECTS:
                t = self.trail[o]
                for k in range(1, len(t)):
                    if all(t[j][0] != t[k][0] for j in range(k + 1, len(t))):
                        cands.append((o, k))
            if not cands:
                return None
            current = [c for c in cands if c[1] == len(self.trail[c[0]]) - 1]
            o, k = rng.choice(current if current and rng.random() < 0.7 else cands)
            t = self.trail[o]
            held = self.event[o] if k == len(t) - 1 else t[k][2]
            return f"Where was the {o} before the {t[k][0]}?", t[k - 1][0], (held, t[k][1], t[k - 1][1])
        if self.task == 5:
            forms = {  # form -> (key of the event it asks about, answer)
                "who_gave": (lambda g, o, r: (o, r), lambda g, o, r: g),
                "who_gave_it": (lambda g, o, r: (o,), lambda g, o, r: g),
                "what": (lambda g, o, r: (g, r), lambda g, o, r: o),
                "received": (lambda g, o, r: (o,), lambda g, o, r: r),
                "to_whom": (lambda g, o, r: (g, o), lambda g, o, r: r),
            }
            cands = []
            for k, (g, o, r, i) in enumerate(self.gives):
                for name, (key, _) in forms.items():
                    later = self.gives[k + 1:]
                    if all(key(g2, o2, r2) != key(g, o, r) for g2, o2, r2, _ in later):
                        cands.append((name, g, o, r, i, k))
            if not cands:
                return None
            # favour the most recent give, as the original stories do
            last = len(self.gives) - 1
            recent = [c for c in cands if c[5] == last]
            name, g, o, r, i, _ = rng.choice(recent if rng.random() < 0.6 else cands)
            question = {
                "who_gave": f"Who gave the {o} to {r}?",
                "who_gave_it": f"Who gave the {o}?",
                "what": f"What did {g} give to {r}?",
                "received": f"Who received the {o}?",
                "to_whom": f"Who did {g} give the {o} to?",
            }[name]
            return question, forms[name][1](g, o, r), (i,)
        raise AssertionError(self.task)


def _qa4_story(rng: random.Random) -> Question:
    """Three places in a line along one axis; each neighbouring pair stated once; ask about one statement."""
    d = rng.choice(("north", "west"))  # a is d of b, b is d of c
    a, b, c = rng.sample(PLACES, 3)
    stated = []  # (x, direction, y): "The x is direction of the y."
    for x, y in ((a, b), (b, c)):
        stated.append((x, d, y) if rng.random() < 0.5 else (y, OPPOSITE[d], x))
    rng.shuffle(stated)
    facts = tuple(f"The {x} is {dd} of the {y}." for x, dd, y in stated)
    i = rng.randrange(2)
    x, dd, y = stated[i]
    form = rng.randrange(4)
    if form == 0:
        q, ans = f"What is {dd} of the {y}?", x
    elif form == 1:
        q, ans = f"What is the {x} {dd} of?", y
    elif form == 2:
        q, ans = f"What is {OPPOSITE[dd]} of the {x}?", y
    else:
        q, ans = f"What is the {y} {OPPOSITE[dd]} of?", x
    return Question(facts, q, ans, (i,), 4)


def _story(task: int, rng: random.Random, n_questions: int, max_facts: int | None) -> list[Question]:
    if task == 4:
        return [_qa4_story(rng)]
    world = _World(task, rng)
    out: list[Question] = []
    cap = max_facts if max_facts is not None else 200
    # qa1 asks after every 2 facts; qa2/qa5 after a warm-up, then every 2 facts when a question exists;
    # qa3 stories are long and ask now and then (as in the original files)
    wait = {1: 2, 2: rng.randrange(2, 13, 2), 3: rng.randrange(4, 25, 2), 5: rng.randrange(2, 13, 2)}[task]
    since = 0
    while len(out) < n_questions and len(world.facts) < cap:
        world.step()
        since += 1
        if since < wait and len(world.facts) < cap:
            continue
        qa = world.ask()
        if qa is not None:
            out.append(Question(tuple(world.facts), qa[0], qa[1], qa[2], task))
            since = 0
            wait = 2 if task != 3 else rng.randrange(2, 15, 2)
    return out


def generate_babi(task: int, n_questions: int, seed: int, *, max_facts: int | None = None) -> list[Question]:
    """Simulate stories for bAbI task qa{task} until `n_questions` questions exist.

    Deterministic by seed (own random.Random, no global state). `max_facts` caps the number of facts
    before each question (stories are cut there and a new one starts), useful for curricula.
    """
    _check_task(task)
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0, got {n_questions}")
    if max_facts is not None and max_facts < MIN_FACTS[task]:
        raise ValueError(f"max_facts={max_facts} is too small for qa{task}: a question needs at least {MIN_FACTS[task]} facts; use max_facts >= {MIN_FACTS[task]} or None")
    rng = random.Random(seed)
    out: list[Question] = []
    empty = 0
    while len(out) < n_questions:
        story = _story(task, rng, min(STORY_QUESTIONS[task], n_questions - len(out)), max_facts)
        empty = 0 if story else empty + 1
        if empty > 1000:
            raise ValueError(f"max_facts={max_facts} is too small to ask qa{task} questions; raise it or pass None")
        out.extend(story)
    return out
