//! CPU-bound work of the offline providers, off the async threads.

use crate::ProviderError;

/// Runs CPU-bound work on tokio's blocking pool. A panic in it is re-raised
/// in the handler, where the runtime counts it as a failed attempt.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ProviderError::transient(
            "worker_shutting_down",
            format!("the blocking task did not run: {e}"),
        )),
    }
}
