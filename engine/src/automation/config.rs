//! Automation configuration (see `state` for the database).
