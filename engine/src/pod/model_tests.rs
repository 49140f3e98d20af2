//! Model-based tests of the pod state machine (being written).
