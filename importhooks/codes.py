"""The finding codes the framework itself reports (plugins declare their own)."""

from __future__ import annotations

from .findings import FindingCode, Severity

PLUGIN_FAILED = FindingCode(
    "pipeline.plugin_failed",
    "The image could not be checked because of an internal error.",
    "A plugin raised an exception. The import is rejected (fail closed); the detail, for operators, "
    "names the exception. Fix or disable the plugin.",
)
TIMEOUT = FindingCode(
    "pipeline.timeout",
    "Checking the image took too long.",
    "A stage ran past its budget in [timeouts] (or the run past run_timeout). Raise the budget if the "
    "image is legitimately large; otherwise the data may be built to exhaust the checker.",
)
HALTED = FindingCode(
    "pipeline.halted",
    "Image import is halted by the operator; try again later.",
    "The kill switch (the halt setting or the halt_file) was set before or during the run.",
)
INCOMPLETE = FindingCode(
    "pipeline.incomplete",
    "The image could not be checked completely.",
    "The run ended before finalize without any error finding; importhooks rejects rather than accept "
    "an image that was not fully checked.",
)
TOO_MANY_PASSES = FindingCode(
    "pipeline.too_many_passes",
    "The image is nested in too many containers.",
    "Sanitize replaced the data more than max_sanitize_passes times (e.g. a compressed archive inside "
    "another, again and again).",
)
PROPERTY_CONFLICT = FindingCode(
    "pipeline.property_conflict",
    "The image's properties could not be determined.",
    "Two set_protected_properties implementations returned different values for one property.",
)
BAD_PROPERTY = FindingCode(
    "pipeline.bad_property",
    "The image's properties could not be determined.",
    "A set_protected_properties implementation returned a key or value that is not a string.",
)
READ_BUDGET = FindingCode(
    "data.read_budget",
    "Checking the image needed more reading than allowed.",
    "Plugins together read more than max_read_passes times the data's size; a plugin is looping, or the "
    "data is built to make it loop.",
)
DATA_CHANGED = FindingCode(
    "data.changed",
    "The image data changed while it was being checked.",
    "The staged file grew, shrank or was rewritten in place (its modification time changed) during the "
    "run; nothing should write to staged data. The detail says what changed.",
)
DATA_REPLACED = FindingCode(
    "data.replaced",
    "The image data changed while it was being checked.",
    "The staged path names another file than the one the run opened first (another file was renamed "
    "over it, or it was removed): what was checked is not what would be stored. Nothing should touch "
    "staged data during a run.",
)
DATA_READ_ERROR = FindingCode(
    "data.read_error",
    "The image data could not be read.",
    "Reading the data failed with an operating-system error (EIO from a failing disk, a network or FUSE "
    "filesystem); the detail names the error. The image is rejected rather than checked in part; check "
    "the storage under the staging area and retry the import.",
)
NO_SPACE = FindingCode(
    "pipeline.no_space",
    "The image could not be checked: the checker ran out of temporary space.",
    "A plugin's write to the run's temporary directory (work_dir) failed with ENOSPC or EDQUOT, e.g. a "
    "compressed image unpacking to more than the work directory holds. Give work_dir more space, or "
    "lower the unpacked-size limits so such images are refused before they fill it.",
)

FRAMEWORK_CODES: tuple[FindingCode, ...] = (
    PLUGIN_FAILED, TIMEOUT, HALTED, INCOMPLETE, TOO_MANY_PASSES, PROPERTY_CONFLICT, BAD_PROPERTY,
    READ_BUDGET, DATA_CHANGED, DATA_REPLACED, DATA_READ_ERROR, NO_SPACE,
)
BY_NAME: dict[str, FindingCode] = {code.code: code for code in FRAMEWORK_CODES}

__all__ = ["BY_NAME", "FRAMEWORK_CODES", "Severity"]
