use axum::{Json, Router, extract::State, routing::get};
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
    Router::new().route(
        "/openapi.json",
        get(|State(state): State<AppState>| async move {
            let packs: Vec<&str> = state.shop.packs.keys().map(String::as_str).collect();
            Json(document(&packs, state.config.max_prompt_chars))
        }),
    )
}

/// A user part, `@`, and a domain of two or more labels ending in letters:
/// addresses sign-up takes as they are (it accepts more, normalised).
const EMAIL_PATTERN: &str = "^[a-z0-9]([a-z0-9_+-]|\\.[a-z0-9]){0,30}@[a-z0-9]{1,20}(-[a-z0-9]{1,20})?(\\.[a-z0-9]{1,20}){0,2}\\.[a-z]{2,10}$";
/// E.164: `+` and 8 to 15 digits (sign-up also drops spaces, dots,
/// hyphens and parentheses).
const PHONE_PATTERN: &str = "^\\+[1-9][0-9]{7,14}$";
/// Visible ASCII, no space at either end (the key is trimmed).
const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]{0,253}[!-~])?$";

/// The document as served: the generated one, fitted where the derives
/// cannot say what the server checks (exactly one of email and phone, the
/// forms it reads them in, the job states, the key's length), and naming
/// the packs this server sells.
pub fn document(packs: &[&str], max_prompt_chars: usize) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    for item in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut())
        {
            // `get_mut`: indexing would add `parameters: null` where none are.
            for param in operation
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut())
                .into_iter()
                .flatten()
            {
                if param["name"] == "Idempotency-Key" {
                    param["schema"] = serde_json::json!({
                        "type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": IDEMPOTENCY_KEY_PATTERN,
                    });
                }
            }
        }
    }
    let states: Vec<&str> = kiln_store::JobState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    for param in doc["paths"]["/v1/jobs"]["get"]["parameters"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if param["name"] == "state" {
            param["schema"] = serde_json::json!({"type": "string", "enum": states});
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    for name in [
        "RegisterRequest",
        "VerifyRequest",
        "ResendRequest",
        "LoginRequest",
    ] {
        let schema = &mut schemas[name];
        schema["properties"]["email"]["pattern"] = EMAIL_PATTERN.into();
        schema["properties"]["email"]["maxLength"] = 254.into();
        schema["properties"]["phone"]["pattern"] = PHONE_PATTERN.into();
        // Exactly one of the two.
        schema["oneOf"] = serde_json::json!([
            {"required": ["email"], "properties": {"email": {"type": "string"}, "phone": {"type": "null"}}},
            {"required": ["phone"], "properties": {"phone": {"type": "string"}, "email": {"type": "null"}}},
        ]);
    }
    schemas["CheckoutBody"]["properties"]["pack"]["enum"] = packs.into();
    // The event stream's schema is that of one event (as OpenAPI 3.2's
    // `itemSchema` has it): its name, its id, and the job as JSON text.
    if let Some(stream) = doc
        .pointer_mut("/paths/~1v1~1jobs~1{id}~1events/get/responses/200/content/text~1event-stream")
    {
        stream["schema"] = serde_json::json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["change", "done"]},
                "id": {"type": "string", "description": "`<n>.<state>.<stage>.<progress>`: send back as Last-Event-ID"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/JobResource"},
                },
            },
        });
    }
    let schemas = &mut doc["components"]["schemas"];
    // Something to draw, within the configured length.
    let prompt = &mut schemas["GenerationRequest"]["properties"]["prompt"];
    prompt["pattern"] = "[^\\s]".into();
    prompt["maxLength"] = max_prompt_chars.into();
    let password = &mut schemas["RegisterRequest"]["properties"]["password"];
    password["minLength"] = 8.into();
    password["maxLength"] = 72.into();
    doc
}
