//! The transactional notices kiln sends (verification codes, export-ready
//! links, policy changes, security incidents, new sign-ins, sign-up
//! attempts on a taken address), rendered as email (subject, text, HTML)
//! and as SMS. Serialized with a `"template"` tag, so a notice can travel
//! as a job payload.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One notice with what it needs to render. Values are interpolated as
/// given (text) or escaped (HTML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum Notice {
    /// A sign-in or contact verification code.
    VerificationCode { code: String, minutes_valid: u32 },
    /// An account's verification code, as it waits in the queue: the id of
    /// its stored row, not the code. The sender derives the code from the
    /// id under the server's code key ([`Notice::with_code`]), so no code
    /// sits in the jobs table; it renders only once derived.
    AccountVerification { code_id: Uuid, minutes_valid: u32 },
    /// Someone tried to register with an address that already has an
    /// account (sent instead of a code, so sign-up reveals nothing).
    RegistrationAttempt,
    /// A data export is ready behind a signed, expiring link.
    ExportReady { url: String, expires_at: String },
    /// A data export finished, as it waits in the queue: the export job's
    /// id, never the link (a link in the jobs table would be a key to the
    /// account's data). The sender signs a link when it sends and makes
    /// this an [`Notice::ExportReady`]; where it cannot make an absolute
    /// link (no `storage.public_base_url`), this renders as it is and
    /// points the user at `GET /v1/me/exports/{id}`, which signs one.
    ExportFinished { export_id: Uuid },
    /// A policy change, announced at least 7 days before it takes effect.
    PolicyNotice {
        version: String,
        effective_on: String,
        summary: String,
    },
    /// A security incident notice (sent within 72 hours of a breach).
    SecurityNotice { summary: String },
    /// A sign-in from a new IP, as it waits in the queue: the id of the
    /// account's access-log entry, not the IP or the user agent. The sender
    /// reads them from the entry when it sends, so no personal
    /// data sits in the jobs table; it renders only once read.
    NewLoginEntry { entry_id: i64 },
    /// A sign-in from an IP address not seen before.
    NewLogin {
        at: String,
        ip: String,
        user_agent: String,
    },
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
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

/// Escaped text with line breaks kept (summaries are written by operators
/// in several lines).
fn html_lines(text: &str) -> String {
    escape_html(text)
        .replace("\r\n", "\n")
        .replace('\n', "<br>\n")
}

/// A link, only for http(s) URLs: anything else (`javascript:`…) is shown
/// as text and never becomes clickable.
fn html_link(url: &str) -> String {
    let escaped = escape_html(url);
    if url.starts_with("https://") || url.starts_with("http://") {
        format!("<a href=\"{escaped}\">{escaped}</a>")
    } else {
        escaped
    }
}

/// The longest product name an SMS carries, so messages stay in one
/// 160-character segment.
const SMS_PRODUCT_CHARS: usize = 30;

fn short(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn minutes(n: u32) -> String {
    if n == 1 {
        "1 minute".to_owned()
    } else {
        format!("{n} minutes")
    }
}

/// Wraps paragraphs (already HTML) in a minimal document with the product
/// name as a heading.
fn html_document(product: &str, title: &str, paragraphs: &[String]) -> String {
    let mut html = format!(
        "<!doctype html>\n<html>\n<head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n<h1>{}</h1>\n",
        escape_html(title),
        escape_html(product)
    );
    for p in paragraphs {
        // Writing to a String cannot fail.
        let _ = writeln!(html, "<p>{p}</p>");
    }
    html.push_str("</body>\n</html>\n");
    html
}

impl Notice {
    /// The notice ready to render: an [`Notice::AccountVerification`]
    /// becomes the [`Notice::VerificationCode`] it stands for, its code
    /// from `code_for(code_id)`; any other notice is returned as it is.
    pub fn with_code(self, code_for: impl FnOnce(Uuid) -> String) -> Notice {
        match self {
            Notice::AccountVerification {
                code_id,
                minutes_valid,
            } => Notice::VerificationCode {
                code: code_for(code_id),
                minutes_valid,
            },
            other => other,
        }
    }

    /// The email: `(subject, text, html)`; `None` for a notice still in
    /// its queued form ([`Notice::AccountVerification`],
    /// [`Notice::NewLoginEntry`]).
    pub fn email(&self, product_name: &str) -> Option<(String, String, String)> {
        let product = product_name;
        let e = escape_html;
        let (subject, text, paragraphs) = match self {
            Notice::AccountVerification { .. } | Notice::NewLoginEntry { .. } => return None,
            Notice::RegistrationAttempt => (
                format!("Someone tried to sign up for {product} with your address"),
                format!(
                    "Someone, perhaps you, tried to create a {product} account with this \
                     address. It already has an account, so nothing was changed.\n\n\
                     If it was you, sign in with your password; if you have not verified \
                     the account yet, ask for a new verification code. If it was not you, \
                     ignore this email: nobody can use your account without your password.\n"
                ),
                vec![
                    format!(
                        "Someone, perhaps you, tried to create a {} account with this \
                         address. It already has an account, so nothing was changed.",
                        e(product)
                    ),
                    "If it was you, sign in with your password; if you have not verified \
                     the account yet, ask for a new verification code. If it was not you, \
                     ignore this email: nobody can use your account without your password."
                        .to_owned(),
                ],
            ),
            Notice::VerificationCode {
                code,
                minutes_valid,
            } => (
                format!("Your {product} verification code"),
                format!(
                    "Your {product} verification code is {code}.\n\n\
                     It expires in {}. If you did not ask for it, ignore this email: \
                     nobody can sign in without the code.\n",
                    minutes(*minutes_valid)
                ),
                vec![
                    format!(
                        "Your {} verification code is <strong>{}</strong>.",
                        e(product),
                        e(code)
                    ),
                    format!(
                        "It expires in {}. If you did not ask for it, ignore this email: \
                         nobody can sign in without the code.",
                        minutes(*minutes_valid)
                    ),
                ],
            ),
            Notice::ExportReady { url, expires_at } => (
                format!("Your {product} data export is ready"),
                format!(
                    "The copy of your {product} data you asked for is ready:\n\n{url}\n\n\
                     The link works until {expires_at}. After that, ask for a new export.\n"
                ),
                vec![
                    format!(
                        "The copy of your {} data you asked for is ready:",
                        e(product)
                    ),
                    html_link(url),
                    format!(
                        "The link works until {}. After that, ask for a new export.",
                        e(expires_at)
                    ),
                ],
            ),
            Notice::ExportFinished { export_id } => (
                format!("Your {product} data export is ready"),
                format!(
                    "The copy of your {product} data you asked for is ready. Sign in to \
                     download it: GET /v1/me/exports/{export_id} answers with a link to \
                     the file.\n"
                ),
                vec![
                    format!(
                        "The copy of your {} data you asked for is ready.",
                        e(product)
                    ),
                    format!(
                        "Sign in to download it: <code>GET /v1/me/exports/{export_id}</code> \
                         answers with a link to the file."
                    ),
                ],
            ),
            Notice::PolicyNotice {
                version,
                effective_on,
                summary,
            } => (
                format!("Changes to the {product} policy, effective {effective_on}"),
                format!(
                    "We are updating the {product} policy (version {version}). \
                     The changes take effect on {effective_on}.\n\n{summary}\n\n\
                     Continuing to use {product} after that date means you accept them.\n"
                ),
                vec![
                    format!(
                        "We are updating the {} policy (version {}). The changes take effect on {}.",
                        e(product),
                        e(version),
                        e(effective_on)
                    ),
                    html_lines(summary),
                    format!(
                        "Continuing to use {} after that date means you accept them.",
                        e(product)
                    ),
                ],
            ),
            Notice::SecurityNotice { summary } => (
                format!("Security notice from {product}"),
                format!(
                    "An important security notice about your {product} account:\n\n{summary}\n"
                ),
                vec![
                    format!(
                        "An important security notice about your {} account:",
                        e(product)
                    ),
                    html_lines(summary),
                ],
            ),
            Notice::NewLogin { at, ip, user_agent } => (
                format!("New sign-in to your {product} account"),
                format!(
                    "Your {product} account was signed in to from a new place.\n\n\
                     When: {at}\nIP address: {ip}\nDevice: {user_agent}\n\n\
                     If this was you, there is nothing to do. If not, change your \
                     password now and sign out of other sessions.\n"
                ),
                vec![
                    format!(
                        "Your {} account was signed in to from a new place.",
                        e(product)
                    ),
                    format!(
                        "When: {}<br>\nIP address: {}<br>\nDevice: {}",
                        e(at),
                        e(ip),
                        e(user_agent)
                    ),
                    "If this was you, there is nothing to do. If not, change your \
                     password now and sign out of other sessions."
                        .to_owned(),
                ],
            ),
        };
        let html = html_document(product, &subject, &paragraphs);
        Some((subject, text, html))
    }

    /// The text message. A verification code fits one 160-character
    /// segment for any product name (it is shortened to 30 characters).
    /// `None` for an [`Notice::AccountVerification`] whose code is not
    /// derived yet.
    pub fn sms(&self, product_name: &str) -> Option<String> {
        let product = short(product_name, SMS_PRODUCT_CHARS);
        Some(match self {
            Notice::AccountVerification { .. } | Notice::NewLoginEntry { .. } => return None,
            Notice::RegistrationAttempt => format!(
                "{product}: someone tried to sign up with your number, which already has an account. Nothing changed. Not you? Ignore this."
            ),
            Notice::VerificationCode {
                code,
                minutes_valid,
            } => format!(
                "{code} is your {product} verification code. It expires in {} min. Never share it.",
                minutes_valid
            ),
            Notice::ExportReady { url, expires_at } => {
                format!("Your {product} data export is ready until {expires_at}: {url}")
            }
            Notice::ExportFinished { export_id } => {
                format!("Your {product} data export is ready: GET /v1/me/exports/{export_id}")
            }
            Notice::PolicyNotice {
                version,
                effective_on,
                ..
            } => format!(
                "{product}: our policy changes on {effective_on} (version {version}). Details are in your email."
            ),
            Notice::SecurityNotice { .. } => {
                format!("{product}: an important security notice was sent to your email.")
            }
            Notice::NewLogin { at, .. } => format!(
                "{product}: new sign-in to your account at {at}. Not you? Change your password now."
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCT: &str = "Kiln";

    fn all() -> Vec<Notice> {
        vec![
            Notice::VerificationCode {
                code: "123456".into(),
                minutes_valid: 10,
            },
            Notice::ExportReady {
                url: "https://kiln.example/exports/abc?sig=1&exp=2".into(),
                expires_at: "2026-12-01 12:00 UTC".into(),
            },
            Notice::PolicyNotice {
                version: "2026-12".into(),
                effective_on: "2026-12-09".into(),
                summary: "We now keep access logs for 6 months.\nNothing else changes.".into(),
            },
            Notice::SecurityNotice {
                summary: "On 20 Nov we found unauthorised access to a log server.".into(),
            },
            Notice::NewLogin {
                at: "2026-11-25 14:00 UTC".into(),
                ip: "203.0.113.7".into(),
                user_agent: "Firefox on Linux".into(),
            },
            Notice::RegistrationAttempt,
        ]
    }

    #[test]
    fn a_finished_export_points_at_its_route_and_carries_no_link() {
        let id = Uuid::from_u128(42);
        let notice = Notice::ExportFinished { export_id: id };
        let (subject, text, html) = notice.email(PRODUCT).unwrap();
        assert_eq!(subject, "Your Kiln data export is ready");
        let route = format!("/v1/me/exports/{id}");
        assert!(text.contains(&route) && html.contains(&route));
        assert!(!text.contains("signature"));
        assert!(notice.sms(PRODUCT).unwrap().contains(&route));
    }

    #[test]
    fn escape_html_escapes_the_five_characters() {
        assert_eq!(
            escape_html(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("plain café"), "plain café");
        assert_eq!(escape_html(""), "");
    }

    #[test]
    fn every_notice_renders_its_values() {
        let expect: [(&str, &[&str]); 6] = [
            ("Your Kiln verification code", &["123456", "10 minutes"]),
            (
                "Your Kiln data export is ready",
                &[
                    "https://kiln.example/exports/abc?sig=1&exp=2",
                    "2026-12-01 12:00 UTC",
                ],
            ),
            (
                "Changes to the Kiln policy, effective 2026-12-09",
                &["2026-12", "6 months", "Nothing else changes."],
            ),
            ("Security notice from Kiln", &["log server"]),
            (
                "New sign-in to your Kiln account",
                &["2026-11-25 14:00 UTC", "203.0.113.7", "Firefox on Linux"],
            ),
            (
                "Someone tried to sign up for Kiln with your address",
                &["already has an account", "nothing was changed"],
            ),
        ];
        for (notice, (subject, values)) in all().iter().zip(expect) {
            let (s, text, html) = notice.email(PRODUCT).unwrap();
            assert_eq!(s, subject);
            for value in values {
                assert!(text.contains(value), "{notice:?} text misses {value}");
                assert!(
                    html.contains(&escape_html(value)),
                    "{notice:?} html misses {value}"
                );
            }
            assert!(html.starts_with("<!doctype html>"));
            assert!(html.contains("<h1>Kiln</h1>"));
            let sms = notice.sms(PRODUCT).unwrap();
            assert!(sms.contains("Kiln"), "{sms}");
            assert!(!sms.is_empty());
        }
    }

    #[test]
    fn html_escapes_every_interpolated_value() {
        let evil = "<script>alert(1)</script>";
        let notices = [
            Notice::VerificationCode {
                code: evil.into(),
                minutes_valid: 5,
            },
            Notice::ExportReady {
                url: evil.into(),
                expires_at: evil.into(),
            },
            Notice::PolicyNotice {
                version: evil.into(),
                effective_on: evil.into(),
                summary: evil.into(),
            },
            Notice::SecurityNotice {
                summary: evil.into(),
            },
            Notice::NewLogin {
                at: evil.into(),
                ip: evil.into(),
                user_agent: evil.into(),
            },
        ];
        for notice in notices {
            let (_, text, html) = notice.email(evil).unwrap();
            assert!(!html.contains("<script>"), "{notice:?}: {html}");
            assert!(html.contains("&lt;script&gt;"), "{notice:?}");
            // Text is plain text: kept as written.
            assert!(text.contains(evil));
        }
    }

    #[test]
    fn only_http_urls_become_links() {
        let (_, _, html) = Notice::ExportReady {
            url: "javascript:alert(1)".into(),
            expires_at: "soon".into(),
        }
        .email(PRODUCT)
        .unwrap();
        assert!(!html.contains("href"), "{html}");
        let (_, _, html) = all()[1].email(PRODUCT).unwrap();
        assert!(
            html.contains(r#"<a href="https://kiln.example/exports/abc?sig=1&amp;exp=2">"#),
            "{html}"
        );
    }

    #[test]
    fn verification_sms_fits_one_segment() {
        let notice = Notice::VerificationCode {
            code: "12345678".into(),
            minutes_valid: 1440,
        };
        let sms = notice.sms(PRODUCT).unwrap();
        assert_eq!(
            sms,
            "12345678 is your Kiln verification code. It expires in 1440 min. Never share it."
        );
        let long_name = "A Product Name That Goes On And On And On Forever".repeat(4);
        let sms = notice.sms(&long_name).unwrap();
        assert!(
            sms.chars().count() < 160,
            "{} chars: {sms}",
            sms.chars().count()
        );
        assert!(sms.contains("A Product Name That Goes On An "));
    }

    #[test]
    fn an_account_code_renders_only_once_derived() {
        let code_id = Uuid::now_v7();
        let queued = Notice::AccountVerification {
            code_id,
            minutes_valid: 10,
        };
        assert_eq!(queued.email(PRODUCT), None);
        assert_eq!(queued.sms(PRODUCT), None);
        let json = serde_json::to_value(&queued).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"template": "account_verification", "code_id": code_id, "minutes_valid": 10}),
            "the payload holds the row's id, no code"
        );
        let ready = queued.with_code(|id| {
            assert_eq!(id, code_id);
            "654321".to_owned()
        });
        assert_eq!(
            ready,
            Notice::VerificationCode {
                code: "654321".into(),
                minutes_valid: 10
            }
        );
        let (_, text, _) = ready.email(PRODUCT).unwrap();
        assert!(text.contains("654321"), "{text}");
        assert!(ready.sms(PRODUCT).unwrap().starts_with("654321 "));
        // Other notices pass through untouched.
        let other = Notice::RegistrationAttempt;
        assert_eq!(
            other.clone().with_code(|_| unreachable!("not a code")),
            other
        );
    }

    #[test]
    fn one_minute_is_singular() {
        let (_, text, _) = Notice::VerificationCode {
            code: "1".into(),
            minutes_valid: 1,
        }
        .email(PRODUCT)
        .unwrap();
        assert!(text.contains("expires in 1 minute."), "{text}");
    }

    #[test]
    fn notices_round_trip_with_a_template_tag() {
        let json = serde_json::to_value(&all()[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"template": "verification_code", "code": "123456", "minutes_valid": 10})
        );
        for notice in all() {
            let json = serde_json::to_string(&notice).unwrap();
            assert_eq!(serde_json::from_str::<Notice>(&json).unwrap(), notice);
        }
        let tags: Vec<String> = all()
            .iter()
            .map(|n| {
                serde_json::to_value(n).unwrap()["template"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            tags,
            [
                "verification_code",
                "export_ready",
                "policy_notice",
                "security_notice",
                "new_login",
                "registration_attempt"
            ]
        );
        assert!(serde_json::from_str::<Notice>(r#"{"template":"spam"}"#).is_err());
    }
}
