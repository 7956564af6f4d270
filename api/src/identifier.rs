//! How an email address or phone number becomes an [`Identifier`]: the one
//! place addresses are normalised, so `Ａｄａ@Example.COM.` and
//! `ada@example.com` are one account, and look-alikes that could pass for
//! another address are refused rather than stored.
//!
//! Email: Unicode NFKC (fullwidth letters, the Kelvin sign and other
//! compatibility forms become their plain letters), no control, format or
//! invisible characters (zero-width spaces and joiners, bidi controls,
//! soft hyphens), no whitespace, the local part lowercased and limited to
//! the characters of an unquoted RFC 5322 address (letters, digits and
//! ``!#$%&'*+-/=?^_`{|}~.``, no leading, trailing or doubled dot), the
//! domain through IDNA (UTS 46, strict: punycode, `xn--…`, as stored) with
//! one trailing dot removed. Phone: NFKC (fullwidth digits), spaces,
//! hyphens, dots and parentheses dropped, then E.164: `+` and 8 to 15
//! digits.

use kiln_store::accounts::Identifier;
use unicode_normalization::UnicodeNormalization;

use crate::Problem;

/// The longest address accepted (RFC 5321's path limit less the brackets).
const MAX_EMAIL_BYTES: usize = 254;
/// The longest local part (RFC 5321).
const MAX_LOCAL_BYTES: usize = 64;

/// The identifier a request names: exactly one of `email` and `phone`.
pub fn identifier(email: Option<String>, phone: Option<String>) -> Result<Identifier, Problem> {
    match (email, phone) {
        (Some(e), None) => email_address(&e).map(Identifier::Email),
        (None, Some(p)) => phone_number(&p).map(Identifier::Phone),
        (Some(_), Some(_)) => Err(Problem::invalid("give either email or phone, not both")),
        (None, None) => Err(Problem::invalid("email or phone is required")),
    }
}

/// An address as an operator types it: a phone number when it starts with
/// `+`, an email address otherwise; normalised as sign-up does.
pub fn parse_address(raw: &str) -> Result<Identifier, Problem> {
    if raw.trim_start().starts_with('+') {
        phone_number(raw).map(Identifier::Phone)
    } else {
        email_address(raw).map(Identifier::Email)
    }
}

/// Characters that are not seen, or not seen as what they are: controls
/// (Cc), and the Unicode default-ignorable code points (zero-width space,
/// joiners, bidi marks and overrides, soft hyphen, variation selectors,
/// tags, fillers…). Such a character makes two addresses look alike.
fn is_invisible(c: char) -> bool {
    c.is_control() || kiln_jobs::is_invisible(c)
}

/// A character allowed in the local part: RFC 5322 `atext` (ASCII) or a
/// letter or digit of any script (RFC 6531), after NFKC.
fn is_local_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
    } else {
        c.is_alphanumeric()
    }
}

fn bad_email(why: &str) -> Problem {
    Problem::invalid(format!("email is not a valid address: {why}"))
}

/// The normalised form of an email address, or why it is refused.
pub fn email_address(raw: &str) -> Result<String, Problem> {
    let raw = raw.trim();
    if raw.chars().any(is_invisible) {
        return Err(bad_email("it contains invisible or control characters"));
    }
    let text: String = raw.nfkc().collect();
    // NFKC can map characters onto invisible ones or spaces (U+3000).
    if text.chars().any(|c| is_invisible(c) || c.is_whitespace()) {
        return Err(bad_email("it contains spaces"));
    }
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(bad_email("it has no @"));
    };
    if local.contains('@') {
        return Err(bad_email("it has more than one @"));
    }
    let local = local.to_lowercase();
    if local.is_empty() || local.len() > MAX_LOCAL_BYTES {
        return Err(bad_email("the part before @ must be 1 to 64 bytes"));
    }
    if !local.chars().all(is_local_char) {
        return Err(bad_email(
            "the part before @ may hold only letters, digits and !#$%&'*+-/=?^_`{|}~.",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad_email(
            "the part before @ must not start or end with a dot, or hold two in a row",
        ));
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let domain = idna::domain_to_ascii_strict(domain)
        .map_err(|_| bad_email("the domain is not a valid domain name"))?;
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return Err(bad_email("the domain needs a dot, as in example.com"));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(bad_email("the domain must be a name, not a number"));
    }
    let address = format!("{local}@{domain}");
    if address.len() > MAX_EMAIL_BYTES {
        return Err(bad_email("it is longer than 254 bytes"));
    }
    Ok(address)
}

/// The E.164 form of a phone number, or why it is refused.
pub fn phone_number(raw: &str) -> Result<String, Problem> {
    let refused = || Problem::invalid("phone must be in E.164 form, e.g. +4915112345678");
    if raw.chars().any(is_invisible) {
        return Err(refused());
    }
    let text: String = raw.nfkc().collect();
    let p: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = p.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
        Ok(p)
    } else {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn email(s: &str) -> Result<String, String> {
        email_address(s).map_err(|p| p.detail)
    }

    #[test]
    fn look_alikes_become_the_plain_address() {
        for same in [
            "ada@example.com",
            " Ada@Example.COM ",
            "ada@example.com.",
            "ＡＤＡ@ｅｘａｍｐｌｅ．ｃｏｍ",
            "ada@EXAMPLE.com",
        ] {
            assert_eq!(email(same).unwrap(), "ada@example.com", "{same:?}");
        }
        // The Kelvin sign is a K.
        assert_eq!(email("\u{212A}im@example.com").unwrap(), "kim@example.com");
        // Internationalised domains are kept in their ASCII form.
        assert_eq!(
            email("ada@Bücher.example").unwrap(),
            "ada@xn--bcher-kva.example"
        );
        assert_eq!(
            email("ada@xn--bcher-kva.example").unwrap(),
            "ada@xn--bcher-kva.example"
        );
        assert_eq!(email("josé@example.com").unwrap(), "josé@example.com");
        assert_eq!(
            email("a.b+tag@example.co.uk").unwrap(),
            "a.b+tag@example.co.uk"
        );
    }

    #[test]
    fn invisible_and_markup_characters_are_refused() {
        for bad in [
            "alice\u{200b}@example.com",
            "ali\u{200d}ce@example.com",
            "alice@exam\u{00ad}ple.com",
            "\u{202e}alice@example.com",
            "alice\u{0000}@example.com",
            "alice\u{0007}@example.com",
            "alice\u{feff}@example.com",
            "ali ce@example.com",
            "alice\u{3000}x@example.com",
            "<script>@example.com",
            "<script>alert(1)</script>@example.com",
            "a\"b@example.com",
            "alice@exa mple.com",
            "alice@<script>.com",
        ] {
            let e = email(bad).unwrap_err();
            assert!(
                e.starts_with("email is not a valid address"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        for (bad, why) in [
            ("nope", "no @"),
            ("a@b@example.com", "more than one @"),
            ("@example.com", "1 to 64 bytes"),
            (".ada@example.com", "dot"),
            ("ada.@example.com", "dot"),
            ("a..da@example.com", "dot"),
            ("ada@localhost", "needs a dot"),
            ("ada@.example.com", "domain"),
            ("ada@example..com", "domain"),
            ("ada@example.com..", "domain"),
            ("ada@1.2.3.4", "not a number"),
            ("ada@-example.com", "domain"),
        ] {
            let e = email(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(email(&long).unwrap_err().contains("64 bytes"));
        let long = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        assert!(email(&long).is_err());
    }

    #[test]
    fn phones_are_normalised_to_e164() {
        for same in [
            "+4915112345678",
            "+49 151 1234-5678",
            "+49 (151) 1234.5678",
            "＋４９１５１１２３４５６７８",
        ] {
            assert_eq!(phone_number(same).unwrap(), "+4915112345678", "{same:?}");
        }
        for bad in [
            "12345",
            "4915112345678",
            "+49151\u{200b}12345678",
            "+49-abc-12345678",
            "+1234567890123456",
        ] {
            assert!(phone_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exactly_one_identifier() {
        assert_eq!(
            identifier(Some(" A@Example.COM ".into()), None).unwrap(),
            Identifier::Email("a@example.com".into())
        );
        assert!(identifier(Some("a@b.co".into()), Some("+4915112345678".into())).is_err());
        assert!(identifier(None, None).is_err());
    }
}
