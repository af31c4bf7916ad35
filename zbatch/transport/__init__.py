"""Message transports: the embedded SQLite queue (no broker) and RabbitMQ through pika."""
