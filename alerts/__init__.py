"""Alert lifecycle, notifications and scheduled checks."""
