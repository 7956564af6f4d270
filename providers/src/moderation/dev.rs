//! The offline moderator of the embedded default: a word list, judging
//! text as written and images by the prompt the offline generator embedded
//! in them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use unicode_normalization::UnicodeNormalization;

use super::{Decision, Moderator};
use crate::{ProviderError, blocking::blocking, images::dev::embedded_prompt};

/// Words the embedded default refuses when no list is configured.
pub const DEFAULT_BLOCKED_WORDS: &[&str] = &["csam", "gore", "nsfw", "nude", "porn"];

const BLOCKED_CATEGORY: &str = "blocked_word";

/// Blocks words and phrases from a list, matched whole and regardless of
/// case. Words are runs of letters and digits: `"gore"` blocks `"GORE
/// scene"`, `"gore-fest"` and `"gore's"`, but not `"gorgeous"` or
/// `"goreous"`. A multi-word entry (`"blood bath"`) matches those words in
/// a row, whatever separates them. Text is compared after NFKC
/// (`"ｎｕｄｅ"` is `"nude"`), with invisible characters both dropped
/// (`"n\u{200b}ude"`) and taken as spaces (`"x\u{200b}nude"`), and a
/// word's plural in `s` or `es` is the word (`"nudes"`).
#[derive(Debug, Clone)]
pub struct DevModerator {
    pub blocked_words: Vec<String>,
}

impl Default for DevModerator {
    /// [`DEFAULT_BLOCKED_WORDS`].
    fn default() -> Self {
        DevModerator::new(DEFAULT_BLOCKED_WORDS.iter().map(|w| (*w).to_owned()))
    }
}

impl DevModerator {
    pub fn new(blocked_words: impl IntoIterator<Item = String>) -> DevModerator {
        DevModerator {
            blocked_words: blocked_words.into_iter().collect(),
        }
    }

    fn judge(&self, text: &str) -> Decision {
        // Invisible characters hide a word when kept as spaces
        // (`n\u{200b}ude`) and when dropped (`x\u{200b}nude`): both readings
        // are judged.
        let readings = [
            words(text, Invisible::Dropped),
            words(text, Invisible::Space),
        ];
        let blocked = self.blocked_words.iter().any(|entry| {
            let phrase = words(entry, Invisible::Dropped);
            !phrase.is_empty()
                && readings.iter().any(|words| {
                    words.windows(phrase.len()).any(|w| {
                        w.iter()
                            .zip(&phrase)
                            .all(|(word, blocked)| is_or_plural(word, blocked))
                    })
                })
        });
        let score = if blocked { 1.0 } else { 0.0 };
        Decision {
            allowed: !blocked,
            categories: if blocked {
                vec![BLOCKED_CATEGORY.to_owned()]
            } else {
                Vec::new()
            },
            scores: BTreeMap::from([(BLOCKED_CATEGORY.to_owned(), score)]),
        }
    }
}

#[derive(Clone, Copy)]
enum Invisible {
    Dropped,
    Space,
}

/// The words of `text` as the list compares them: NFKC (fullwidth and
/// other compatibility letters become plain ones), lowercase, split at
/// anything but letters and digits.
fn words(text: &str, invisible: Invisible) -> Vec<String> {
    let visible = |c: char| match (invisible, kiln_jobs::is_invisible(c)) {
        (_, false) => Some(c),
        (Invisible::Dropped, true) => None,
        (Invisible::Space, true) => Some(' '),
    };
    // Dropped before NFKC, so `e\u{200b}\u{301}` composes into `é`.
    let text: String = text.chars().filter_map(visible).collect();
    let folded: String = text
        .nfkc()
        .flat_map(char::to_lowercase)
        .filter_map(visible)
        .collect();
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `word` is `blocked` or its plural in `s` or `es`.
fn is_or_plural(word: &str, blocked: &str) -> bool {
    word.strip_prefix(blocked)
        .is_some_and(|rest| matches!(rest, "" | "s" | "es"))
}

#[async_trait]
impl Moderator for DevModerator {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn check_text(&self, text: &str) -> Result<Decision, ProviderError> {
        Ok(self.judge(text))
    }

    /// Judges the prompt the dev generator embedded; an image without one
    /// (from elsewhere, or stored, since storing strips it) is allowed,
    /// since there is nothing to judge offline.
    async fn check_image(&self, png: &[u8]) -> Result<Decision, ProviderError> {
        // Only kiln's own PNGs carry a prompt to judge by; a JPEG, WebP or
        // GIF (a reference image, an upscaler's answer) has nothing the
        // word list can read. Anything else must decode as a PNG.
        let other_format = crate::image_type(png).is_some_and(|t| t != "image/png");
        if other_format {
            return Ok(self.judge(""));
        }
        let png = png.to_vec();
        let prompt = blocking(move || {
            embedded_prompt(&png).map_err(|e| {
                ProviderError::permanent("invalid_image", format!("not a readable PNG: {e}"))
            })
        })
        .await?;
        Ok(self.judge(prompt.as_deref().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use crate::images::{DevGenerator, GeneratedImage, ImageGenerator, ImageRequest};

    use super::*;

    async fn one(prompt: &str, width: u32, height: u32) -> GeneratedImage {
        let mut images = DevGenerator
            .generate(&ImageRequest {
                reference_urls: Vec::new(),
                prompt: prompt.to_owned(),
                model: "dev".to_owned(),
                width,
                height,
                n: 1,
            })
            .await
            .unwrap();
        images.remove(0)
    }

    fn blocks(moderator: &DevModerator, text: &str) -> bool {
        !moderator.judge(text).allowed
    }

    #[test]
    fn blocked_words_match_whole_words_in_any_case() {
        let m = DevModerator::default();
        for text in [
            "gore",
            "GORE scene",
            "a scene full of Gore.",
            "gore-fest",
            "gore's aftermath",
            "(nsfw)",
            "snake_case_nsfw_tag",
        ] {
            assert!(blocks(&m, text), "{text:?} should be blocked");
        }
        for text in [
            "goreous",
            "gorgeous sunset",
            "Al Gorey",
            "nsfw2",
            "",
            "a red fox",
        ] {
            assert!(!blocks(&m, text), "{text:?} should be allowed");
        }
    }

    #[test]
    fn zero_width_fullwidth_and_plural_spellings_are_the_word() {
        let m = DevModerator::default();
        for text in [
            "n\u{200b}ude",
            "a n\u{200d}u\u{2060}d\u{feff}e\u{ad} portrait",
            "ｎｕｄｅ",
            "ＮＵＤＥ beach",
            "𝐧𝐮𝐝𝐞",
            "nudes",
            "NUDES please",
            "pornes",
            "fan\u{200b}nude",
            "ｇｏｒｅ\u{200b}s",
        ] {
            assert!(blocks(&m, text), "{text:?} should be blocked");
        }
        for text in [
            "gorgeous",
            "ｇｏｒｇｅｏｕｓ",
            "nudest",
            "nuder",
            "pornography",
        ] {
            assert!(!blocks(&m, text), "{text:?} should be allowed");
        }
    }

    #[test]
    fn plurals_of_each_word_of_a_phrase_match() {
        let m = DevModerator::new(["blood bath".to_owned()]);
        assert!(blocks(&m, "blood baths"));
        assert!(blocks(&m, "ｂｌｏｏｄ\u{200b} bathes"));
        assert!(!blocks(&m, "bloody bath"));
    }

    #[test]
    fn phrases_match_consecutive_words() {
        let m = DevModerator::new(["Blood Bath".to_owned()]);
        assert!(blocks(&m, "a blood   bath at dawn"));
        assert!(blocks(&m, "BLOOD-BATH"));
        assert!(!blocks(&m, "blood in the bath"));
        assert!(!blocks(&m, "bloodbath"));
    }

    #[test]
    fn empty_list_entries_block_nothing() {
        let m = DevModerator::new(["".to_owned(), " - ".to_owned()]);
        assert!(!blocks(&m, "anything at all"));
    }

    #[tokio::test]
    async fn text_decisions_carry_category_and_score() {
        let m = DevModerator::default();
        let blocked = m.check_text("nsfw please").await.unwrap();
        assert_eq!(
            blocked,
            Decision {
                allowed: false,
                categories: vec!["blocked_word".to_owned()],
                scores: BTreeMap::from([("blocked_word".to_owned(), 1.0)]),
            }
        );
        let allowed = m.check_text("a red fox").await.unwrap();
        assert!(allowed.allowed);
        assert!(allowed.categories.is_empty());
        assert_eq!(allowed.scores["blocked_word"], 0.0);
    }

    #[tokio::test]
    async fn image_checks_judge_the_embedded_prompt() {
        let m = DevModerator::default();
        let bad = one("a GORE scene", 16, 16).await;
        let decision = m.check_image(&bad.png).await.unwrap();
        assert!(!decision.allowed);
        assert_eq!(decision.categories, vec!["blocked_word".to_owned()]);

        let good = one("a gorgeous scene", 16, 16).await;
        assert!(m.check_image(&good.png).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn an_image_is_judged_before_its_metadata_is_stripped() {
        // Why the workers moderate a provider's bytes before stripping them.
        let m = DevModerator::default();
        let bad = one("a gore scene", 16, 16).await;
        assert!(!m.check_image(&bad.png).await.unwrap().allowed);
        let stored = crate::image_metadata::strip_metadata(&bad.png).unwrap();
        assert!(m.check_image(&stored).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn images_without_a_prompt_are_allowed() {
        let mut png = Vec::new();
        let mut encoder = png::Encoder::new(&mut png, 2, 2);
        encoder.set_color(png::ColorType::Rgba);
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&[0; 16])
            .unwrap();
        let decision = DevModerator::default().check_image(&png).await.unwrap();
        assert!(decision.allowed);
    }

    #[tokio::test]
    async fn undecodable_images_are_permanent_errors() {
        let m = DevModerator::default();
        let whole = one("a red fox", 64, 64).await.png;
        let mut corrupt = whole.to_vec();
        let last_idat_byte = corrupt.len() - 20;
        corrupt[last_idat_byte] ^= 0xff;
        for bytes in [
            &b""[..],
            b"not a png",
            &whole[..whole.len() / 2],
            corrupt.as_slice(),
        ] {
            let err = m.check_image(bytes).await.unwrap_err();
            assert!(
                matches!(&err, ProviderError::Permanent { code, .. } if code == "invalid_image"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn other_image_formats_pass_the_word_list() {
        let m = DevModerator::default();
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F'];
        let webp = *b"RIFF\x10\x00\x00\x00WEBPVP8 ";
        let gif = *b"GIF89a\x01\x00\x01\x00";
        for image in [&jpeg[..], &webp[..], &gif[..]] {
            assert!(m.check_image(image).await.unwrap().allowed);
        }
    }
}
