"""The base of every configuration section (finetune_assets.config holds them all)."""

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem a user must fix; the message says what and where."""


class ConfigSection(BaseModel):
    """A recipe section: unknown keys are errors, and values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
