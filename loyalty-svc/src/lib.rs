//! loyalty-svc (being written)
