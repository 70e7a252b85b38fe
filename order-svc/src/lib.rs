//! order-svc (being written)
