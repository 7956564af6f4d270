//! Text as people see it: which characters are drawn as nothing.

/// Format characters (Unicode category Cf: zero-width space and joiners,
/// bidi marks and overrides, soft hyphen, word joiner, BOM, tags) and the
/// other default-ignorable code points (combining grapheme joiner, Hangul
/// fillers, variation selectors): drawn as nothing, so a word split by them
/// still reads as the word, and two addresses that differ only by them
/// look alike. Both the dev moderator and the address check go by it.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::is_invisible;

    #[test]
    fn zero_width_and_bidi_characters_are_invisible_letters_are_not() {
        for c in [
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{00AD}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', 'é', '中', ' ', '1'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }
}
