"""Views: render samples and ledgers (text, Rich, JSON, reports, metrics). Never read the machine."""
