//! Role assumption (in progress).
