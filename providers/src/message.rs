//! What the email and SMS providers share: the answer to a send, keeping
//! recipients out of error messages, and the offline outbox the dev
//! providers write to.

use std::path::Path;

use crate::ProviderError;

/// A message the provider accepted for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The provider's id for the message (Twilio `sid`, mail API `id`,
    /// SMTP `Message-ID`, dev outbox file stem), kept to match delivery
    /// reports and complaints later.
    pub provider_id: String,
}

/// Provider answers often quote the recipient ("The 'To' number +1555…
/// is not valid", "550 <bob@example.com>: no such user"). Error messages
/// end up in the job's error history and in logs, so anything that looks
/// like an email address or a phone number is blanked out.
pub(crate) fn redact_contacts(text: &str) -> String {
    redact_numbers(&redact_addresses(text))
}

/// Replaces every word containing `@` (words end at whitespace, brackets
/// and quotes) with `<address>`.
fn redact_addresses(text: &str) -> String {
    let is_boundary = |c: char| c.is_whitespace() || "<>()[]{}\"'`,;".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            out.push_str("<address>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_boundary(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Replaces runs of digits and phone punctuation holding 7 or more digits
/// (long enough to be a subscriber number) with `<number>`. Provider error
/// codes (Twilio's are 5 digits, SMTP's 3) survive.
fn redact_numbers(text: &str) -> String {
    let is_phone_char = |c: char| c.is_ascii_digit() || " +-().".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !(c.is_ascii_digit() || c == '+' || c == '(') {
            out.push(c);
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, next)) = chars.peek() {
            if !is_phone_char(next) {
                break;
            }
            end = i + next.len_utf8();
            chars.next();
        }
        // The run may end in spaces or punctuation that belong to the text.
        let run = &text[start..end];
        let last_digit = run.rfind(|c: char| c.is_ascii_digit()).map_or(0, |i| i + 1);
        let (number, rest) = run.split_at(last_digit);
        if number.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.push_str("<number>");
        } else {
            out.push_str(number);
        }
        out.push_str(rest);
    }
    out
}

/// Writes one message to `dir` as `<kind>-<uuid>.<ext>` and returns the
/// file stem as the provider id. Written to a hidden temporary name and
/// renamed, so someone watching the directory never reads half a file.
pub(crate) async fn write_outbox(
    dir: &Path,
    kind: &str,
    ext: &str,
    content: &str,
) -> Result<SentMessage, ProviderError> {
    let id = format!("{kind}-{}", uuid::Uuid::now_v7());
    let unwritable = |e: std::io::Error| {
        ProviderError::transient(
            "outbox_unwritable",
            format!("writing to the outbox {} failed: {e}", dir.display()),
        )
    };
    tokio::fs::create_dir_all(dir).await.map_err(unwritable)?;
    let tmp = dir.join(format!(".{id}.tmp"));
    tokio::fs::write(&tmp, content).await.map_err(unwritable)?;
    tokio::fs::rename(&tmp, dir.join(format!("{id}.{ext}")))
        .await
        .map_err(unwritable)?;
    Ok(SentMessage { provider_id: id })
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            TempDir(std::env::temp_dir().join(format!("kiln-outbox-{}", uuid::Uuid::now_v7())))
        }

        /// The files in the directory (not the hidden temporaries).
        pub fn files(&self) -> Vec<PathBuf> {
            let Ok(entries) = std::fs::read_dir(&self.0) else {
                return Vec::new();
            };
            let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            files
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_phone_numbers_are_redacted() {
        assert_eq!(
            redact_contacts("The 'To' number +15005550001 is not a valid phone number."),
            "The 'To' number <number> is not a valid phone number."
        );
        assert_eq!(
            redact_contacts("550 5.1.1 <bob@example.com>: Recipient address rejected"),
            "550 5.1.1 <<address>>: Recipient address rejected"
        );
        assert_eq!(
            redact_contacts("call +1 (555) 123-4567 now, or mail a.b+c@d.io."),
            "call <number> now, or mail <address>"
        );
        // Error codes and short numbers stay readable.
        assert_eq!(
            redact_contacts("Twilio 21211 after 3 tries (code 20429)"),
            "Twilio 21211 after 3 tries (code 20429)"
        );
        assert_eq!(redact_contacts(""), "");
        assert_eq!(redact_contacts("héllo 12"), "héllo 12");
    }

    #[tokio::test]
    async fn outbox_files_are_written_whole_under_the_returned_id() {
        let dir = test_support::TempDir::new();
        let sent = write_outbox(&dir.0.join("nested"), "sms", "txt", "hello")
            .await
            .unwrap();
        assert!(sent.provider_id.starts_with("sms-"));
        let path = dir
            .0
            .join("nested")
            .join(format!("{}.txt", sent.provider_id));
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hello");
        let names: Vec<_> = std::fs::read_dir(dir.0.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary left behind: {names:?}");
    }

    #[tokio::test]
    async fn an_unwritable_outbox_is_a_transient_error() {
        let dir = test_support::TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        // A file where the directory should be.
        let blocked = dir.0.join("file");
        std::fs::write(&blocked, "x").unwrap();
        let e = write_outbox(&blocked, "sms", "txt", "hello")
            .await
            .unwrap_err();
        assert_eq!(e.code(), "outbox_unwritable");
        assert!(matches!(e, ProviderError::Transient { .. }));
    }
}
