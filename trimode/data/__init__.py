"""Data pipeline for trimode: stdlib code corpus, checkable instruction tasks,
and streaming packing/batching for pre-training and SFT."""

from trimode.data.corpus import CodeCorpus, is_heldout, list_stdlib_files, stdlib_root
from trimode.data.packing import Batcher, pack_documents, pack_sft_examples
from trimode.data.tasks import (
    FAMILIES,
    Task,
    format_prompt,
    generate_tasks,
    iter_tasks,
    normalize_output,
    score,
    sft_example,
    task_messages,
    task_split,
)

__all__ = [
    "Batcher", "CodeCorpus", "FAMILIES", "Task", "format_prompt", "generate_tasks", "is_heldout",
    "iter_tasks", "list_stdlib_files", "normalize_output", "pack_documents", "pack_sft_examples",
    "score", "sft_example", "stdlib_root", "task_messages", "task_split",
]
