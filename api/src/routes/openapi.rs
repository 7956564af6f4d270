use axum::{Json, Router, routing::get};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::AppState;

/// The OpenAPI 3.1 document, generated from the handlers' annotations so it
/// cannot drift from the code.
#[derive(OpenApi)]
#[openapi(
    info(title = "kiln", description = "Enqueue image generations and follow their jobs: poll (`GET /v1/jobs/{id}?wait=S`), stream (`GET /v1/jobs/{id}/events`), or be called back.

Webhooks: a job enqueued with `webhook_url` is announced by a POST of `{\"type\": \"job.completed\" | \"job.changed\", \"timestamp\", \"data\"}` (`data`: the job resource for `job.completed`; `{id, kind, state, stage, progress}` at the change for `job.changed`) signed the Standard Webhooks way: headers `webhook-id` (one per event, repeated on every retry), `webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256, keyed with the base64-decoded part of the `whsec_` secret from `POST /v1/me/webhook-secret`, over `{webhook-id}.{webhook-timestamp}.{raw body}`). A 2xx answer delivers; 408, 429, 5xx and connection faults are retried for about a day; redirects are never followed."),
    paths(
        super::auth::register,
        super::auth::verify,
        super::auth::resend,
        super::auth::login,
        super::auth::logout,
        super::credits::show,
        super::credits::packs,
        super::credits::checkout,
        super::payments::notification,
        super::me::show,
        super::me::correct,
        super::me::restrict,
        super::me::unrestrict,
        super::me::delete_account,
        super::me::deletion_code,
        super::me::webhook_secret,
        super::admin::subject_requests,
        super::admin::exports,
        super::notices::policy,
        super::notices::acknowledge,
        super::notices::publish,
        super::notices::security_notice,
        super::notices::show_security_notice,
        super::operators::queues,
        super::operators::pause,
        super::operators::resume,
        super::operators::concurrency,
        super::operators::list,
        super::operators::show,
        super::operators::retry,
        super::operators::discard,
        super::operators::cancel,
        super::operators::bulk,
        super::workers::list,
        super::me::access_log,
        super::exports::create,
        super::exports::show,
        super::generations::create,
        super::generations::create_batch,
        super::upscales::create,
        super::jobs::show,
        super::job_events::events,
        super::jobs::list,
        super::jobs::cancel,
        super::jobs::deliveries,
        super::images::list,
        super::images::show,
        super::images::delete,
        super::images::file,
        super::health::healthz,
        super::health::readyz,
    ),
    components(schemas(crate::Problem)),
    modifiers(&BearerAuth, &ProblemJson),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Errors are `application/problem+json` (RFC 9457), as the server sends
/// them: every response whose body is the `Problem` schema is documented
/// under that media type, not `application/json`.
struct ProblemJson;

impl Modify for ProblemJson {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let is_problem = response.content.get("application/json").is_some_and(|c| {
                        matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
                    });
                    if is_problem
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response
                            .content
                            .insert("application/problem+json".to_owned(), content);
                    }
                }
            }
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
