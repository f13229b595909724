//! Read-only inspection of queues, for tools such as `mqtool`.
