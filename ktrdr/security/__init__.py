"""What makes a ktrdr fleet safe to spread across hosts: NATS credentials per role, TLS
certificates, the nats-server configuration that enforces the roles, and the status API's token."""
