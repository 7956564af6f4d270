//! The languages notices go out in, and text an operator writes in each.

use serde::{Deserialize, Serialize};

/// An account's language for notices: English, or Chinese in simplified
/// or traditional characters. Set at registration or by `PATCH /v1/me`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Locale {
    #[default]
    #[serde(rename = "en")]
    En,
    #[serde(rename = "zh-Hans")]
    ZhHans,
    #[serde(rename = "zh-Hant")]
    ZhHant,
}

impl Locale {
    pub const ALL: [Locale; 3] = [Locale::En, Locale::ZhHans, Locale::ZhHant];

    /// The BCP 47 tag, as stored and as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::ZhHans => "zh-Hans",
            Locale::ZhHant => "zh-Hant",
        }
    }

    pub fn parse(tag: &str) -> Option<Locale> {
        Self::ALL.into_iter().find(|l| l.as_str() == tag)
    }

    /// Picks the string for this locale.
    pub fn pick<T>(self, en: T, zh_hans: T, zh_hant: T) -> T {
        match self {
            Locale::En => en,
            Locale::ZhHans => zh_hans,
            Locale::ZhHant => zh_hant,
        }
    }
}

impl std::fmt::Display for Locale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text an operator writes for users (a policy summary, a security
/// notice): English always, Chinese in one or both scripts. A reader whose
/// script is missing gets the other script; English is the last resort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizedText {
    pub en: String,
    #[serde(rename = "zh-Hans", default, skip_serializing_if = "Option::is_none")]
    pub zh_hans: Option<String>,
    #[serde(rename = "zh-Hant", default, skip_serializing_if = "Option::is_none")]
    pub zh_hant: Option<String>,
}

impl LocalizedText {
    /// The same text for every reader.
    pub fn same(text: impl Into<String>) -> LocalizedText {
        LocalizedText {
            en: text.into(),
            zh_hans: None,
            zh_hant: None,
        }
    }

    /// The text a reader of `locale` gets.
    pub fn get(&self, locale: Locale) -> &str {
        let (hans, hant) = (self.zh_hans.as_deref(), self.zh_hant.as_deref());
        match locale {
            Locale::En => None,
            Locale::ZhHans => hans.or(hant),
            Locale::ZhHant => hant.or(hans),
        }
        .unwrap_or(&self.en)
    }

    /// Whether a Chinese version is given (in either script).
    pub fn has_chinese(&self) -> bool {
        self.zh_hans.is_some() || self.zh_hant.is_some()
    }

    /// Every version given, to check each.
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.en.as_str())
            .chain(self.zh_hans.as_deref())
            .chain(self.zh_hant.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_round_trip_as_their_tags() {
        for locale in Locale::ALL {
            let json = serde_json::to_string(&locale).unwrap();
            assert_eq!(json, format!("\"{}\"", locale.as_str()));
            assert_eq!(serde_json::from_str::<Locale>(&json).unwrap(), locale);
            assert_eq!(Locale::parse(locale.as_str()), Some(locale));
        }
        assert_eq!(Locale::parse("zh"), None);
        assert!(serde_json::from_str::<Locale>("\"fr\"").is_err());
    }

    #[test]
    fn a_missing_script_falls_back_to_the_other_then_english() {
        let hans_only = LocalizedText {
            en: "hello".into(),
            zh_hans: Some("你好".into()),
            zh_hant: None,
        };
        assert_eq!(hans_only.get(Locale::En), "hello");
        assert_eq!(hans_only.get(Locale::ZhHans), "你好");
        assert_eq!(hans_only.get(Locale::ZhHant), "你好");
        let both = LocalizedText {
            zh_hant: Some("妳好".into()),
            ..hans_only.clone()
        };
        assert_eq!(both.get(Locale::ZhHant), "妳好");
        assert_eq!(LocalizedText::same("hi").get(Locale::ZhHant), "hi");
        assert!(!LocalizedText::same("hi").has_chinese());
        assert!(hans_only.has_chinese());
        let json = serde_json::to_value(&hans_only).unwrap();
        assert_eq!(json, serde_json::json!({"en": "hello", "zh-Hans": "你好"}));
        assert!(serde_json::from_str::<LocalizedText>(r#"{"en":"a","fr":"b"}"#).is_err());
    }
}
