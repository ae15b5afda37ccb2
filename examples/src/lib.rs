//! Shared code of the conc examples.
