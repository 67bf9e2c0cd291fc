//! Leader watch (being written).
