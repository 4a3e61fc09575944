"""Mail gateway for CRMs: BCC dropbox filing, email-in pipelines, outbound relay."""

__version__ = "0.1.0"
