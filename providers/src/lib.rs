//! The external parties kiln's handlers call, one folder per capability
//! (`images`, `moderation`, `upscale`, `email`, `sms`, `fetch`,
//! `payments`): each holds
//! its small trait, the settings section that picks an implementation, the
//! real clients and an offline `dev` implementation. Handlers hold them as
//! `Arc<dyn Trait>`, built by [`ProviderSettings`] behind the shared rate
//! limits of [`limits`], so a handler never knows which one it talks to and
//! tests can swap in fakes. Every HTTP client retries the same way
//! ([`http`]), and every failure is a [`ProviderError`] carrying its retry
//! decision. This crate knows nothing of the worker runtime, the store or
//! the API: it depends only on `kiln-jobs`, for the job error it converts
//! into.

mod blocking;
pub mod email;
mod error;
pub mod fetch;
pub mod http;
pub mod image_metadata;
mod image_type;
pub mod images;
pub mod limits;
mod message;
pub mod moderation;
pub mod openai;
pub mod payments;
mod settings;
pub mod sms;
pub mod upscale;
pub mod webhook;

pub use error::ProviderError;
pub use image_type::image_type;
pub use message::SentMessage;
pub use settings::{BuiltProviders, PROVIDER_KEYS, ProviderSettings};
