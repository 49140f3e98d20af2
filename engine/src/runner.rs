//! Drives a pod Embryo -> Preparing -> Prepared/Running through the registered
//! backends.
