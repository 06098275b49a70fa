//! perf lab harness
