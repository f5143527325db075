//! Export sink (in progress).
