"""TaskVine's C-level constants (``cvine``), result codes and their user-facing strings."""

from __future__ import annotations

VINE_DEFAULT_PORT = 9123
VINE_WAIT_FOREVER = -1

# File types.
VINE_FILE = 1
VINE_URL = 2
VINE_TEMP = 3
VINE_BUFFER = 4
VINE_MINI_TASK = 5

# File flags.
VINE_PEER_NOSHARE = 1
VINE_UNLINK_WHEN_DONE = 2

# Cache levels.
VINE_CACHE_LEVEL_TASK = 0
VINE_CACHE_LEVEL_WORKFLOW = 1
VINE_CACHE_LEVEL_WORKER = 2
VINE_CACHE_LEVEL_FOREVER = 3

# Schedulers.
VINE_SCHEDULE_UNSET = 0
VINE_SCHEDULE_FCFS = 1
VINE_SCHEDULE_FILES = 2
VINE_SCHEDULE_TIME = 3
VINE_SCHEDULE_RAND = 4
VINE_SCHEDULE_WORST = 5
VINE_SCHEDULE_DISK = 6

# Allocation modes.
VINE_ALLOCATION_MODE_FIXED = 0
VINE_ALLOCATION_MODE_MAX = 1
VINE_ALLOCATION_MODE_MIN_WASTE = 2
VINE_ALLOCATION_MODE_MAX_THROUGHPUT = 3
VINE_ALLOCATION_MODE_GREEDY_BUCKETING = 4
VINE_ALLOCATION_MODE_EXHAUSTIVE_BUCKETING = 5
VINE_ALLOCATION_MODE_DET_GREEDY_BUCKETING = 6
VINE_ALLOCATION_MODE_DET_EXHAUSTIVE_BUCKETING = 7
VINE_ALLOCATION_MODE_QUANTIZED_BUCKETING = 8

# Mount flags.
VINE_TRANSFER_ALWAYS = 0
VINE_FIXED_LOCATION = 1
VINE_WATCH = 2
VINE_FAILURE_ONLY = 4
VINE_SUCCESS_ONLY = 8
VINE_RETRACT_ON_RESET = 16
VINE_MOUNT_SYMLINK = 32
VINE_MOUNT_MKDIR = 64

# Task states.
VINE_TASK_INITIAL = 0
VINE_TASK_READY = 1
VINE_TASK_RUNNING = 2
VINE_TASK_WAITING_RETRIEVAL = 3
VINE_TASK_RETRIEVED = 4
VINE_TASK_DONE = 5

TASK_STATE_NAMES = {
    VINE_TASK_INITIAL: "INITIAL",
    VINE_TASK_READY: "READY",
    VINE_TASK_RUNNING: "RUNNING",
    VINE_TASK_WAITING_RETRIEVAL: "WAITING_RETRIEVAL",
    VINE_TASK_RETRIEVED: "RETRIEVED",
    VINE_TASK_DONE: "DONE",
}

# Exec modes for function calls.
VINE_EXEC_MODE_DIRECT = 1
VINE_EXEC_MODE_FORK = 2

# Results: code -> enum name.  The user-facing string is the name lower-cased with "_" -> " ".
RESULT_CODES: dict[str, int] = {
    "SUCCESS": 0,
    "INPUT_MISSING": 1,
    "OUTPUT_MISSING": 2,
    "STDOUT_MISSING": 4,
    "SIGNAL": 8,
    "RESOURCE_EXHAUSTION": 16,
    "MAX_END_TIME": 24,
    "UNKNOWN": 32,
    "FORSAKEN": 40,
    "MAX_RETRIES": 48,
    "MAX_WALL_TIME": 56,
    "MONITOR_ERROR": 64,
    "OUTPUT_TRANSFER_ERROR": 72,
    "FIXED_LOCATION_MISSING": 80,
    "CANCELLED": 88,
    "LIBRARY_EXIT": 96,
    "SANDBOX_EXHAUSTION": 104,
    "MISSING_LIBRARY": 112,
}

# Written out (not generated) so type checkers and editors see them.
VINE_RESULT_SUCCESS = 0
VINE_RESULT_INPUT_MISSING = 1
VINE_RESULT_OUTPUT_MISSING = 2
VINE_RESULT_STDOUT_MISSING = 4
VINE_RESULT_SIGNAL = 8
VINE_RESULT_RESOURCE_EXHAUSTION = 16
VINE_RESULT_MAX_END_TIME = 24
VINE_RESULT_UNKNOWN = 32
VINE_RESULT_FORSAKEN = 40
VINE_RESULT_MAX_RETRIES = 48
VINE_RESULT_MAX_WALL_TIME = 56
VINE_RESULT_MONITOR_ERROR = 64
VINE_RESULT_OUTPUT_TRANSFER_ERROR = 72
VINE_RESULT_FIXED_LOCATION_MISSING = 80
VINE_RESULT_CANCELLED = 88
VINE_RESULT_LIBRARY_EXIT = 96
VINE_RESULT_SANDBOX_EXHAUSTION = 104
VINE_RESULT_MISSING_LIBRARY = 112

RESULT_STRINGS: dict[int, str] = {code: name.lower().replace("_", " ") for name, code in RESULT_CODES.items()}
RESULT_FROM_STRING: dict[str, int] = {s: c for c, s in RESULT_STRINGS.items()}


def result_string(code: int) -> str:
    """The user-facing result string of a result code, e.g. 0 -> ``"success"``."""
    return RESULT_STRINGS.get(code, "unknown")


def result_enum_name(code: int) -> str:
    """The transactions-log spelling of a result code, e.g. 1 -> ``"INPUT_MISSING"``."""
    return result_string(code).upper().replace(" ", "_")


def get_c_constant(name: str) -> int:
    """Upstream's ``get_c_constant("result_success")`` = ``VINE_RESULT_SUCCESS``."""
    key = "VINE_" + name.upper()
    if key not in globals():
        raise ValueError(f"no constant named {name!r} (looked for {key})")
    return int(globals()[key])
