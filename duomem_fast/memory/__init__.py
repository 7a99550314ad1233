"""Procedural memory: records, the bank with retrieval, script building, playbook text, shipped defaults."""
from duomem_fast.memory.bank import MemoryBank
from duomem_fast.memory.build import memory_from_record, rule_script, lm_script, SCRIPT_PROMPT
from duomem_fast.memory.defaults import default_adapter_dir, default_bank_path
from duomem_fast.memory.playbook import format_playbook
from duomem_fast.memory.record import Memory
from duomem_fast.memory.tasks import TASK_TYPES, infer_task_type, parse_task

__all__ = ["Memory", "MemoryBank", "format_playbook", "memory_from_record", "rule_script", "lm_script",
           "SCRIPT_PROMPT", "default_bank_path", "default_adapter_dir", "TASK_TYPES", "parse_task", "infer_task_type"]
