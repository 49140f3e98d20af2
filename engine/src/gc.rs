//! Pod garbage collection.
