"""E-mail: scheduled reports from the primary only, alert digests from every worker."""
