"""Which environment variables hold credentials: the well-known ones and the name patterns.

One list, used by the `selfmcp_env_keys` core skill (which reports names only) and by
output redaction (which hides the values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KNOWN_SERVICES: dict[str, str] = {
    "ANTHROPIC_API_KEY": "Anthropic (Claude)",
    "OPENAI_API_KEY": "OpenAI",
    "GEMINI_API_KEY": "Google Gemini",
    "GOOGLE_API_KEY": "Google APIs",
    "GOOGLE_CLIENT_ID": "Google OAuth client",
    "GOOGLE_CLIENT_SECRET": "Google OAuth client",
    "MISTRAL_API_KEY": "Mistral",
    "COHERE_API_KEY": "Cohere",
    "GROQ_API_KEY": "Groq",
    "HF_TOKEN": "Hugging Face",
    "GITHUB_TOKEN": "GitHub",
    "GITLAB_TOKEN": "GitLab",
    "SLACK_BOT_TOKEN": "Slack",
    "DISCORD_BOT_TOKEN": "Discord",
    "TELEGRAM_BOT_TOKEN": "Telegram",
    "NOTION_API_KEY": "Notion",
    "LINEAR_API_KEY": "Linear",
    "STRIPE_API_KEY": "Stripe",
    "TWILIO_AUTH_TOKEN": "Twilio",
    "SENDGRID_API_KEY": "SendGrid",
    "AWS_ACCESS_KEY_ID": "Amazon Web Services",
    "AWS_SECRET_ACCESS_KEY": "Amazon Web Services",
    "AZURE_OPENAI_API_KEY": "Azure OpenAI",
    "DATABASE_URL": "Database connection string",
}

# Names that look like credentials. A name matching none of these is not treated as secret.
CREDENTIAL_NAME_PATTERNS: tuple[str, ...] = (
    r".*_API_KEY", r".*_TOKEN", r".*_SECRET", r".*_KEY", r".*_PASSWORD", r".*_CREDENTIALS",
    r".*_SECRET_.*", r".*_AUTH_.*", r"DATABASE_URL", r".*_PAT",
)
_CREDENTIAL_NAME_RE = re.compile("^(?:" + "|".join(CREDENTIAL_NAME_PATTERNS) + ")$", re.IGNORECASE)


def is_credential_name(name: str) -> bool:
    return name in KNOWN_SERVICES or bool(_CREDENTIAL_NAME_RE.match(name))


def credential_names(environ: Mapping[str, str]) -> list[str]:
    """Names of the variables in `environ` that look like credentials, sorted."""
    return sorted(n for n in environ if is_credential_name(n))
