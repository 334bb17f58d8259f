"""Mail authentication: SPF (RFC 7208) now; DKIM, DMARC and Authentication-Results follow."""
