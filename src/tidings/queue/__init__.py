"""The outbound queue: relaying accepted mail to remote MX hosts, retries, and DSN bounces."""
