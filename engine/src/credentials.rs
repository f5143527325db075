//! Credentials for exports (in progress).
