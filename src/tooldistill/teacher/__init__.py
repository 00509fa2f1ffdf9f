"""Claude as the teacher: capture samples through the Messages and Message Batches APIs, and judge."""
