//! Python extension `loom._native`: loom-core's Envelope codec for the Python SDK.
use pyo3::prelude::*;

#[pymodule]
fn _native(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
