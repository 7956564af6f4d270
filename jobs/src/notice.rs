//! The transactional notices kiln sends (verification codes, export-ready
//! links, policy changes, security incidents, new sign-ins, sign-up
//! attempts on a taken address), rendered as email (subject, text, HTML)
//! and as SMS in the reader's [`Locale`]. Serialized with a `"template"`
//! tag, so a notice can travel as a job payload.
//!
//! Each message is written once as paragraphs of spans; the text and the
//! HTML forms are both rendered from them, so they cannot say different
//! things.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Locale;

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
    /// A published policy version, as it waits in the queue: its name.
    /// The sender reads the version's date and its summary in the
    /// reader's language when it sends.
    PolicyVersion { version: String },
    /// A policy change, announced at least 7 days before it takes effect.
    PolicyNotice {
        version: String,
        effective_on: String,
        summary: String,
    },
    /// A security notice, as it waits in the queue: the stored notice's
    /// id; the sender reads its text in the reader's language.
    SecurityIncident { notice_id: Uuid },
    /// A security incident notice (sent within 72 hours of a breach).
    SecurityNotice { subject: String, body: String },
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

/// A piece of a paragraph.
enum Span {
    /// Plain text; line breaks are kept.
    Text(String),
    /// Emphasised (a code).
    Strong(String),
    /// A route or other literal.
    Code(String),
    /// A link, clickable only for http(s) URLs: anything else
    /// (`javascript:`…) is shown as text.
    Link(String),
}

use Span::{Code, Link, Strong, Text};

impl Span {
    fn text(&self) -> &str {
        match self {
            Text(s) | Strong(s) | Code(s) | Link(s) => s,
        }
    }

    fn html(&self) -> String {
        match self {
            Text(s) => escape_html(s).replace("\r\n", "\n").replace('\n', "<br>\n"),
            Strong(s) => format!("<strong>{}</strong>", escape_html(s)),
            Code(s) => format!("<code>{}</code>", escape_html(s)),
            Link(url) => {
                let escaped = escape_html(url);
                if url.starts_with("https://") || url.starts_with("http://") {
                    format!("<a href=\"{escaped}\">{escaped}</a>")
                } else {
                    escaped
                }
            }
        }
    }
}

/// A paragraph of one plain text.
fn p(text: String) -> Vec<Span> {
    vec![Text(text)]
}

/// The longest product name an SMS carries, so a code fits one segment:
/// 160 characters in English, 70 in Chinese (UCS-2).
fn sms_product_chars(locale: Locale) -> usize {
    locale.pick(30, 20, 20)
}

fn short(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn minutes(n: u32, locale: Locale) -> String {
    match locale {
        Locale::En if n == 1 => "1 minute".to_owned(),
        Locale::En => format!("{n} minutes"),
        Locale::ZhHans => format!("{n} 分钟"),
        Locale::ZhHant => format!("{n} 分鐘"),
    }
}

/// Renders paragraphs as a minimal document with the product name as a
/// heading.
fn html_document(product: &str, title: &str, locale: Locale, paragraphs: &[Vec<Span>]) -> String {
    let mut html = format!(
        "<!doctype html>\n<html lang=\"{locale}\">\n<head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n<h1>{}</h1>\n",
        escape_html(title),
        escape_html(product)
    );
    for paragraph in paragraphs {
        let inner: String = paragraph.iter().map(Span::html).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(html, "<p>{inner}</p>");
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn plain_text(paragraphs: &[Vec<Span>]) -> String {
    let mut text = paragraphs
        .iter()
        .map(|p| p.iter().map(Span::text).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n\n");
    text.push('\n');
    text
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

    /// Whether this is a notice's queued form, which the sender turns into
    /// the notice it stands for before it can render.
    pub fn is_queued_form(&self) -> bool {
        matches!(
            self,
            Notice::AccountVerification { .. }
                | Notice::NewLoginEntry { .. }
                | Notice::PolicyVersion { .. }
                | Notice::SecurityIncident { .. }
        )
    }

    /// The subject and paragraphs of the email; `None` for a queued form.
    fn message(&self, product: &str, l: Locale) -> Option<(String, Vec<Vec<Span>>)> {
        Some(match self {
            Notice::AccountVerification { .. }
            | Notice::NewLoginEntry { .. }
            | Notice::PolicyVersion { .. }
            | Notice::SecurityIncident { .. } => return None,
            Notice::RegistrationAttempt => (
                l.pick(
                    format!("Someone tried to sign up for {product} with your address"),
                    format!("有人尝试用您的地址注册 {product}"),
                    format!("有人嘗試用您的地址註冊 {product}"),
                ),
                vec![
                    p(l.pick(
                        format!(
                            "Someone, perhaps you, tried to create a {product} account with this \
                             address. It already has an account, so nothing was changed."
                        ),
                        format!(
                            "有人（也许是您）尝试用这个地址创建 {product} 账户。该地址已有账户，因此没有任何更改。"
                        ),
                        format!(
                            "有人（也許是您）嘗試用這個地址建立 {product} 帳戶。該地址已有帳戶，因此沒有任何變更。"
                        ),
                    )),
                    p(l.pick(
                        "If it was you, sign in with your password; if you have not verified \
                         the account yet, ask for a new verification code. If it was not you, \
                         ignore this email: nobody can use your account without your password.",
                        "如果是您本人，请用密码登录；如果账户尚未验证，请重新申请验证码。\
                         如果不是您，请忽略此邮件：没有您的密码，任何人都无法使用您的账户。",
                        "如果是您本人，請用密碼登入；如果帳戶尚未驗證，請重新申請驗證碼。\
                         如果不是您，請忽略此郵件：沒有您的密碼，任何人都無法使用您的帳戶。",
                    )
                    .to_owned()),
                ],
            ),
            Notice::VerificationCode {
                code,
                minutes_valid,
            } => {
                let expires = minutes(*minutes_valid, l);
                (
                    l.pick(
                        format!("Your {product} verification code"),
                        format!("您的 {product} 验证码"),
                        format!("您的 {product} 驗證碼"),
                    ),
                    vec![
                        vec![
                            Text(l.pick(
                                format!("Your {product} verification code is "),
                                format!("您的 {product} 验证码是 "),
                                format!("您的 {product} 驗證碼是 "),
                            )),
                            Strong(code.clone()),
                            Text(l.pick(".", "。", "。").to_owned()),
                        ],
                        p(l.pick(
                            format!(
                                "It expires in {expires}. If you did not ask for it, ignore this \
                                 email: nobody can sign in without the code."
                            ),
                            format!(
                                "验证码将在 {expires}后失效。如果这不是您本人的请求，请忽略此邮件：没有验证码，任何人都无法登录。"
                            ),
                            format!(
                                "驗證碼將在 {expires}後失效。如果這不是您本人的請求，請忽略此郵件：沒有驗證碼，任何人都無法登入。"
                            ),
                        )),
                    ],
                )
            }
            Notice::ExportReady { url, expires_at } => (
                export_subject(product, l),
                vec![
                    p(l.pick(
                        format!("The copy of your {product} data you asked for is ready:"),
                        format!("您申请的 {product} 数据副本已准备好："),
                        format!("您申請的 {product} 資料副本已準備好："),
                    )),
                    vec![Link(url.clone())],
                    p(l.pick(
                        format!(
                            "The link works until {expires_at}. After that, ask for a new export."
                        ),
                        format!("链接有效期至 {expires_at}。过期后请重新申请导出。"),
                        format!("連結有效期至 {expires_at}。過期後請重新申請匯出。"),
                    )),
                ],
            ),
            Notice::ExportFinished { export_id } => (
                export_subject(product, l),
                vec![
                    p(l.pick(
                        format!("The copy of your {product} data you asked for is ready."),
                        format!("您申请的 {product} 数据副本已准备好。"),
                        format!("您申請的 {product} 資料副本已準備好。"),
                    )),
                    vec![
                        Text(l.pick("Sign in to download it: ", "请登录后下载：", "請登入後下載：").to_owned()),
                        Code(format!("GET /v1/me/exports/{export_id}")),
                        Text(
                            l.pick(
                                " answers with a link to the file.",
                                " 会返回文件的链接。",
                                " 會回傳檔案的連結。",
                            )
                            .to_owned(),
                        ),
                    ],
                ],
            ),
            Notice::PolicyNotice {
                version,
                effective_on,
                summary,
            } => (
                l.pick(
                    format!("Changes to the {product} policy, effective {effective_on}"),
                    format!("{product} 政策变更，自 {effective_on} 起生效"),
                    format!("{product} 政策變更，自 {effective_on} 起生效"),
                ),
                vec![
                    p(l.pick(
                        format!(
                            "We are updating the {product} policy (version {version}). \
                             The changes take effect on {effective_on}."
                        ),
                        format!(
                            "我们正在更新 {product} 的政策（版本 {version}），变更将于 {effective_on} 生效。"
                        ),
                        format!(
                            "我們正在更新 {product} 的政策（版本 {version}），變更將於 {effective_on} 生效。"
                        ),
                    )),
                    p(summary.clone()),
                    p(l.pick(
                        format!("Continuing to use {product} after that date means you accept them."),
                        format!("该日期之后继续使用 {product}，即表示您接受这些变更。"),
                        format!("該日期之後繼續使用 {product}，即表示您接受這些變更。"),
                    )),
                ],
            ),
            Notice::SecurityNotice { subject, body } => (
                l.pick(
                    format!("Security notice from {product}: {subject}"),
                    format!("{product} 安全通知：{subject}"),
                    format!("{product} 安全通知：{subject}"),
                ),
                vec![
                    p(l.pick(
                        format!("An important security notice about your {product} account:"),
                        format!("关于您的 {product} 账户的重要安全通知："),
                        format!("關於您的 {product} 帳戶的重要安全通知："),
                    )),
                    p(body.clone()),
                ],
            ),
            Notice::NewLogin { at, ip, user_agent } => (
                l.pick(
                    format!("New sign-in to your {product} account"),
                    format!("您的 {product} 账户有新的登录"),
                    format!("您的 {product} 帳戶有新的登入"),
                ),
                vec![
                    p(l.pick(
                        format!("Your {product} account was signed in to from a new place."),
                        format!("您的 {product} 账户在一个新的位置登录。"),
                        format!("您的 {product} 帳戶在一個新的位置登入。"),
                    )),
                    p(l.pick(
                        format!("When: {at}\nIP address: {ip}\nDevice: {user_agent}"),
                        format!("时间：{at}\nIP 地址：{ip}\n设备：{user_agent}"),
                        format!("時間：{at}\nIP 位址：{ip}\n裝置：{user_agent}"),
                    )),
                    p(l.pick(
                        "If this was you, there is nothing to do. If not, change your \
                         password now and sign out of other sessions.",
                        "如果是您本人，无需任何操作。如果不是，请立即修改密码并退出其他会话。",
                        "如果是您本人，無需任何操作。如果不是，請立即變更密碼並登出其他工作階段。",
                    )
                    .to_owned()),
                ],
            ),
        })
    }

    /// The email in `locale`: `(subject, text, html)`; `None` for a notice
    /// still in its queued form ([`Notice::is_queued_form`]).
    pub fn email(&self, product_name: &str, locale: Locale) -> Option<(String, String, String)> {
        let (subject, paragraphs) = self.message(product_name, locale)?;
        let html = html_document(product_name, &subject, locale, &paragraphs);
        Some((subject, plain_text(&paragraphs), html))
    }

    /// The text message in `locale`. A verification code fits one segment
    /// for any product name (it is shortened). `None` for a queued form.
    pub fn sms(&self, product_name: &str, l: Locale) -> Option<String> {
        let product = short(product_name, sms_product_chars(l));
        Some(match self {
            Notice::AccountVerification { .. }
            | Notice::NewLoginEntry { .. }
            | Notice::PolicyVersion { .. }
            | Notice::SecurityIncident { .. } => return None,
            Notice::RegistrationAttempt => l.pick(
                format!(
                    "{product}: someone tried to sign up with your number, which already has an account. Nothing changed. Not you? Ignore this."
                ),
                format!("{product}：有人尝试用您的号码注册，该号码已有账户，未作任何更改。不是您？请忽略。"),
                format!("{product}：有人嘗試用您的號碼註冊，該號碼已有帳戶，未作任何變更。不是您？請忽略。"),
            ),
            Notice::VerificationCode {
                code,
                minutes_valid: m,
            } => l.pick(
                format!("{code} is your {product} verification code. It expires in {m} min. Never share it."),
                format!("{code} 是您的 {product} 验证码，{m} 分钟内有效。请勿告诉他人。"),
                format!("{code} 是您的 {product} 驗證碼，{m} 分鐘內有效。請勿告訴他人。"),
            ),
            Notice::ExportReady { url, expires_at } => l.pick(
                format!("Your {product} data export is ready until {expires_at}: {url}"),
                format!("您的 {product} 数据导出已就绪，有效期至 {expires_at}：{url}"),
                format!("您的 {product} 資料匯出已就緒，有效期至 {expires_at}：{url}"),
            ),
            Notice::ExportFinished { export_id } => l.pick(
                format!("Your {product} data export is ready: GET /v1/me/exports/{export_id}"),
                format!("您的 {product} 数据导出已就绪：GET /v1/me/exports/{export_id}"),
                format!("您的 {product} 資料匯出已就緒：GET /v1/me/exports/{export_id}"),
            ),
            Notice::PolicyNotice {
                version,
                effective_on,
                ..
            } => l.pick(
                format!(
                    "{product}: our policy changes on {effective_on} (version {version}). See what changes in the app."
                ),
                format!("{product}：我们的政策将于 {effective_on} 变更（版本 {version}），详情请在应用内查看。"),
                format!("{product}：我們的政策將於 {effective_on} 變更（版本 {version}），詳情請在應用程式內查看。"),
            ),
            // A breach notice is the whole of what the reader gets, so it
            // is sent in full (several segments if need be).
            Notice::SecurityNotice { subject, body } => l.pick(
                format!("{product} security notice: {subject}\n{body}"),
                format!("{product} 安全通知：{subject}\n{body}"),
                format!("{product} 安全通知：{subject}\n{body}"),
            ),
            Notice::NewLogin { at, .. } => l.pick(
                format!("{product}: new sign-in to your account at {at}. Not you? Change your password now."),
                format!("{product}：您的账户于 {at} 有新的登录。不是您？请立即修改密码。"),
                format!("{product}：您的帳戶於 {at} 有新的登入。不是您？請立即變更密碼。"),
            ),
        })
    }
}

fn export_subject(product: &str, l: Locale) -> String {
    l.pick(
        format!("Your {product} data export is ready"),
        format!("您的 {product} 数据导出已就绪"),
        format!("您的 {product} 資料匯出已就緒"),
    )
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
                subject: "Log server access".into(),
                body: "On 20 Nov we found unauthorised access to a log server.".into(),
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
        let (subject, text, html) = notice.email(PRODUCT, Locale::En).unwrap();
        assert_eq!(subject, "Your Kiln data export is ready");
        let route = format!("/v1/me/exports/{id}");
        assert!(text.contains(&route) && html.contains(&route));
        assert!(!text.contains("signature"));
        assert!(notice.sms(PRODUCT, Locale::En).unwrap().contains(&route));
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
            (
                "Security notice from Kiln: Log server access",
                &["log server"],
            ),
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
            let (s, text, html) = notice.email(PRODUCT, Locale::En).unwrap();
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
            let sms = notice.sms(PRODUCT, Locale::En).unwrap();
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
                subject: evil.into(),
                body: evil.into(),
            },
            Notice::NewLogin {
                at: evil.into(),
                ip: evil.into(),
                user_agent: evil.into(),
            },
        ];
        for notice in notices {
            let (_, text, html) = notice.email(evil, Locale::En).unwrap();
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
        .email(PRODUCT, Locale::En)
        .unwrap();
        assert!(!html.contains("href"), "{html}");
        let (_, _, html) = all()[1].email(PRODUCT, Locale::En).unwrap();
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
        let sms = notice.sms(PRODUCT, Locale::En).unwrap();
        assert_eq!(
            sms,
            "12345678 is your Kiln verification code. It expires in 1440 min. Never share it."
        );
        let long_name = "A Product Name That Goes On And On And On Forever".repeat(4);
        let sms = notice.sms(&long_name, Locale::En).unwrap();
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
        assert_eq!(queued.email(PRODUCT, Locale::En), None);
        assert_eq!(queued.sms(PRODUCT, Locale::En), None);
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
        let (_, text, _) = ready.email(PRODUCT, Locale::En).unwrap();
        assert!(text.contains("654321"), "{text}");
        assert!(
            ready
                .sms(PRODUCT, Locale::En)
                .unwrap()
                .starts_with("654321 ")
        );
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
        .email(PRODUCT, Locale::En)
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

    #[test]
    fn every_notice_renders_in_every_locale_with_its_values() {
        for notice in all() {
            let (en_subject, ..) = notice.email(PRODUCT, Locale::En).unwrap();
            for locale in [Locale::ZhHans, Locale::ZhHant] {
                let (subject, text, html) = notice.email(PRODUCT, locale).unwrap();
                assert_ne!(subject, en_subject, "{notice:?} in {locale}");
                assert!(subject.contains(PRODUCT), "{subject}");
                // Written in Chinese: CJK ideographs in subject and text.
                let cjk = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
                assert!(
                    cjk(&subject) && cjk(&text),
                    "{notice:?} in {locale}: {text}"
                );
                assert!(
                    html.contains(&format!("<html lang=\"{locale}\">")),
                    "{html}"
                );
                let sms = notice.sms(PRODUCT, locale).unwrap();
                assert!(cjk(&sms), "{sms}");
            }
        }
        // The values a reader needs are there in every language.
        let code = &all()[0];
        let export = &all()[1];
        for locale in Locale::ALL {
            let (_, text, _) = code.email(PRODUCT, locale).unwrap();
            assert!(text.contains("123456") && text.contains("10"), "{text}");
            let (_, text, html) = export.email(PRODUCT, locale).unwrap();
            assert!(text.contains("https://kiln.example/exports/abc?sig=1&exp=2"));
            assert!(html.contains("<a href="), "{html}");
        }
    }

    #[test]
    fn the_two_scripts_differ_where_their_characters_do() {
        let (_, hans, _) = all()[0].email(PRODUCT, Locale::ZhHans).unwrap();
        let (_, hant, _) = all()[0].email(PRODUCT, Locale::ZhHant).unwrap();
        assert!(
            hans.contains("验证码") && !hans.contains("驗證碼"),
            "{hans}"
        );
        assert!(
            hant.contains("驗證碼") && !hant.contains("验证码"),
            "{hant}"
        );
    }

    #[test]
    fn a_chinese_code_sms_fits_one_ucs2_segment() {
        let notice = Notice::VerificationCode {
            code: "12345678".into(),
            minutes_valid: 1440,
        };
        let long_name = "A Product Name That Goes On And On".repeat(4);
        for locale in [Locale::ZhHans, Locale::ZhHant] {
            let sms = notice.sms(&long_name, locale).unwrap();
            assert!(
                sms.chars().count() <= 70,
                "{} chars: {sms}",
                sms.chars().count()
            );
            assert!(sms.starts_with("12345678 "), "{sms}");
        }
    }

    #[test]
    fn queued_forms_do_not_render() {
        let queued = [
            Notice::PolicyVersion {
                version: "2027-01".into(),
            },
            Notice::SecurityIncident {
                notice_id: Uuid::from_u128(7),
            },
            Notice::NewLoginEntry { entry_id: 3 },
        ];
        for notice in queued {
            assert!(notice.is_queued_form());
            for locale in Locale::ALL {
                assert_eq!(notice.email(PRODUCT, locale), None);
                assert_eq!(notice.sms(PRODUCT, locale), None);
            }
        }
        assert!(!all()[0].is_queued_form());
    }
}
