//! The operator page: `GET /admin`, served by kiln itself from files
//! embedded in the binary (`api/assets/operator-page/`), behind a sign-in
//! of its own (`/admin/login`, `/admin/logout`) that opens an ordinary
//! session and hands its token to the browser as an HttpOnly,
//! SameSite=Strict cookie limited to `/admin`. The page holds no data: its
//! script reads everything from the admin API (`/admin/v1/…`), which takes
//! the cookie as it takes a bearer token, and sends the session's CSRF
//! token with every change (see `auth::Operator`).
//!
//! Every answer under `/admin` carries a strict Content-Security-Policy
//! (no inline script or style: the script and style sheet are files under
//! `/admin/assets/`), `nosniff`, `no-referrer` and `no-store`.

use std::net::SocketAddr;

use axum::{
    Form, Router,
    extract::{ConnectInfo, Request, State, rejection::FormRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    AppState, Problem,
    auth::{
        self, ADMIN_COOKIE, ClientOrigin, admin_cookie, csrf_matches, csrf_refused, csrf_token,
        token_hash,
    },
    identifier::parse_address,
};

const INDEX_HTML: &str = include_str!("../../assets/operator-page/index.html");
const LOGIN_HTML: &str = include_str!("../../assets/operator-page/login.html");
const FORBIDDEN_HTML: &str = include_str!("../../assets/operator-page/forbidden.html");
const SCRIPT: &str = include_str!("../../assets/operator-page/admin.js");
const STYLE: &str = include_str!("../../assets/operator-page/admin.css");

/// The page's Content-Security-Policy: its own files only, no inline
/// script or style, no framing, forms posting only to kiln.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long a sign-in to the page lasts (or `api.token_ttl_secs`, when
/// shorter): a working day, not the API tokens' month.
const PAGE_SESSION_SECS: u64 = 12 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/assets/admin.js", get(script))
        .route("/admin/assets/admin.css", get(style))
}

/// Adds the page's security headers to every answer under `/admin` (the
/// page, its files and the admin API's JSON alike).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let admin = path == "/admin" || path.starts_with("/admin/");
    let mut response = next.run(req).await;
    if admin {
        let headers = response.headers_mut();
        for (name, value) in [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ] {
            headers.insert(name, value);
        }
    }
    response
}

/// Text for an HTML text node or a quoted attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The sign-in form, with a message above it when there is one.
fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let message = message
        .map(|m| format!(r#"<p class="error" role="alert">{}</p>"#, escape(m)))
        .unwrap_or_default();
    html(status, LOGIN_HTML.replace("{{message}}", &message))
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The session the admin cookie names, when it is live.
async fn cookie_session(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<(kiln_jobs::UserId, String)>, Problem> {
    let Some(token) = admin_cookie(parts) else {
        return Ok(None);
    };
    let hash = token_hash(&token);
    Ok(state.store.session_user(&hash).await?.map(|id| (id, hash)))
}

/// The page, for an operator signed in with the cookie: the sign-in form
/// without a session; 403 and nothing else for an account without the
/// role.
async fn page(State(state): State<AppState>, parts: Parts) -> Result<Response, Problem> {
    let Some((user, hash)) = cookie_session(&parts, &state).await? else {
        return Ok(see_other("/admin/login"));
    };
    if !state.store.is_operator(user).await? {
        return Ok(html(StatusCode::FORBIDDEN, FORBIDDEN_HTML.to_owned()));
    }
    let csrf = csrf_token(&state, &hash);
    Ok(html(
        StatusCode::OK,
        INDEX_HTML.replace("{{csrf}}", &escape(&csrf)),
    ))
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    /// An email address, or a phone number starting with `+`.
    account: String,
    password: String,
}

/// Whether the request came straight from this machine over plain HTTP to
/// a loopback address (a developer's browser, the tests): only then does
/// the cookie go without `Secure`, which a browser would not send back
/// over `http://`. The peer must be loopback, no proxy may have forwarded
/// it (no `Forwarded` or `X-Forwarded-*` header, nor the configured client
/// IP header), and the page it was posted from (`Origin`, which browsers
/// send with every POST; else `Host`) must be `http://` on a loopback
/// name. A proxy in front of kiln that terminates TLS leaves `Origin` at
/// `https://…`, so its users get a `Secure` cookie.
fn plain_http_on_loopback(parts: &Parts, state: &AppState) -> bool {
    let peer_loopback = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    if !peer_loopback {
        return false;
    }
    let headers = &parts.headers;
    let forwarded = ["forwarded", "x-forwarded-for", "x-forwarded-proto"]
        .iter()
        .any(|h| headers.contains_key(*h))
        || state
            .config
            .client_ip_header
            .as_deref()
            .is_some_and(|h| headers.contains_key(h));
    if forwarded {
        return false;
    }
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match header(header::ORIGIN) {
        Some(origin) => origin
            .strip_prefix("http://")
            .is_some_and(is_loopback_authority),
        None => header(header::HOST).is_some_and(is_loopback_authority),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `Set-Cookie` value that hands the browser its session.
fn session_cookie(token: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{ADMIN_COOKIE}={token}; Path=/admin; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes the browser forget it.
fn cleared_cookie(secure: bool) -> String {
    session_cookie("", 0, secure)
}

/// Signs in from the form: the password is checked as `POST
/// /v1/auth/login` checks it (same throttle, same log entries), and only
/// an operator gets a session; anyone else gets the form again with 403
/// and no cookie.
async fn login(
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, Problem> {
    let Ok(Form(form)) = form else {
        return Ok(login_page(
            StatusCode::BAD_REQUEST,
            Some("Give your email or phone and your password."),
        ));
    };
    let Ok(identifier) = parse_address(&form.account) else {
        return Ok(login_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("That is not an email address or a phone number (+ and digits)."),
        ));
    };
    let origin = ClientOrigin::of(&parts, &state.config);
    let user = match super::auth::check_password(&state, &identifier, form.password, &origin).await
    {
        Ok(user) => user,
        Err(problem) => {
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = login_page(status, Some(&problem.detail));
            if let Some(secs) = problem.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(response);
        }
    };
    if !state.store.is_operator(user).await? {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            Some("This account does not have the operator role."),
        ));
    }
    let detail = json!({"via": "operator_page"});
    let ttl = PAGE_SESSION_SECS.min(state.config.token_ttl_secs);
    let (token, _) =
        super::auth::open_session(&state, &identifier, user, &origin, ttl, Some(detail)).await?;
    let secure = !plain_http_on_loopback(&parts, &state);
    let cookie = session_cookie(&token, ttl, secure);
    let mut response = see_other("/admin");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(Problem::internal)?,
    );
    Ok(response)
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the cookie's session (with the session's CSRF token, from the
/// form or the header) and forgets the cookie.
async fn logout(
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Result<Response, Problem> {
    let secure = !plain_http_on_loopback(&parts, &state);
    if let Some((user, hash)) = cookie_session(&parts, &state).await? {
        let given = match header_csrf(&parts.headers) {
            Some(h) => h,
            None => form.map(|Form(f)| f.csrf).unwrap_or_default(),
        };
        if !csrf_matches(&state, &hash, &given) {
            return Err(csrf_refused());
        }
        state.store.revoke_session(&hash).await?;
        let origin = ClientOrigin::of(&parts, &state.config);
        state
            .store
            .record_access(
                Some(user),
                kiln_store::access_log::AccessEvent::Logout,
                &origin,
            )
            .await?;
    }
    let mut response = see_other("/admin/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cleared_cookie(secure)).map_err(Problem::internal)?,
    );
    Ok(response)
}

fn header_csrf(headers: &HeaderMap) -> Option<String> {
    headers
        .get(auth::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ` on…=` attribute (`onclick=`, `onload =`).
    fn has_handler_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            name > 0 && rest[name..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn loopback_authorities() {
        for yes in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost:3000",
            "LOCALHOST",
            "[::1]:8080",
            "[::1]",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback_authority(yes), "{yes}");
        }
        for no in [
            "example.com",
            "10.0.0.1:80",
            "[2001:db8::1]:443",
            "localhost.example.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<script>"x"&'y'</script>"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn cookies_carry_every_flag() {
        let c = session_cookie("t0k", 60, true);
        assert_eq!(
            c,
            "kiln_admin=t0k; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!session_cookie("t0k", 60, false).contains("Secure"));
        assert!(cleared_cookie(true).starts_with("kiln_admin=; Path=/admin; Max-Age=0;"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        for page in [INDEX_HTML, LOGIN_HTML, FORBIDDEN_HTML] {
            let lower = page.to_ascii_lowercase();
            assert!(!lower.contains("<style"), "inline style sheet");
            assert!(!lower.contains(" style="), "style attribute");
            assert!(!has_handler_attribute(&lower), "inline event handler");
            for script in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
                assert!(
                    script.starts_with(r#"<script src="/admin/assets/admin.js""#),
                    "inline script: {script}"
                );
            }
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "the script must use textContent"
        );
        assert!(!SCRIPT.contains("outerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("document.write"));
    }
}
