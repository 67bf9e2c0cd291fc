//! Data plane (being written).
