"""Tasks: bAbI (reader, writer, generator), haystack text and tokenizer, BABILong samples."""
from memlab.tasks.babi import Question, format_babi, generate_babi, parse_babi, read_babi, read_babi_dir, task_words
from memlab.tasks.babilong import BabilongTask, Sample, SplicedTokens, make_sample, parse_length, parse_lengths, parse_task_spec
from memlab.tasks.text import (
    BookHaystack,
    HaystackCut,
    HaystackError,
    ProceduralHaystack,
    TokenizedHaystack,
    WordTokenizer,
    load_haystack,
    tokenize_words,
)

__all__ = [
    "Question", "format_babi", "generate_babi", "parse_babi", "read_babi", "read_babi_dir", "task_words",
    "BabilongTask", "Sample", "SplicedTokens", "make_sample", "parse_length", "parse_lengths", "parse_task_spec",
    "BookHaystack", "HaystackCut", "HaystackError", "ProceduralHaystack", "TokenizedHaystack", "WordTokenizer",
    "load_haystack", "tokenize_words",
]
