//! What a new password must be: 8 to 72 bytes (bcrypt reads no further),
//! and not guessable: zxcvbn's score at least 3 (more than 10^8 guesses),
//! judged with the account's own address as a known word, so a password
//! made of the address is refused.

use crate::Problem;

/// The lowest zxcvbn score accepted.
const MIN_SCORE: zxcvbn::Score = zxcvbn::Score::Three;

/// Refuses a password that is too short, too long, or too easy to guess
/// for someone who knows `identifier` (the normalised email or phone).
pub fn check_new_password(password: &str, identifier: &str) -> Result<(), Problem> {
    if password.len() < 8 || password.len() > 72 {
        return Err(Problem::invalid("password must be 8 to 72 bytes long"));
    }
    let lowered = password.to_lowercase();
    // zxcvbn knows the address and its pieces (`ada`, `example`,
    // `+4915112345678`) as words a guesser would try first. and its pieces (`ada`, `example`, `+4915112345678`).
    let mut inputs: Vec<&str> = vec![identifier];
    inputs.extend(
        identifier
            .split(['@', '.', '+'])
            .filter(|part| part.len() >= 3),
    );
    if zxcvbn::zxcvbn(password, &inputs).score() < MIN_SCORE {
        return Err(weak("it is too easy to guess"));
    }
    // Built from the address: what is left without its pieces must be a
    // good password by itself (`adaexample123` leaves `123`).
    let mut pieces: Vec<String> = inputs.iter().map(|p| p.to_lowercase()).collect();
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let rest = pieces.iter().fold(lowered.clone(), |rest, piece| {
        rest.replace(piece.as_str(), "")
    });
    if rest != lowered && zxcvbn::zxcvbn(&rest, &inputs).score() < MIN_SCORE {
        return Err(weak("it is built from your email or phone"));
    }
    Ok(())
}

fn weak(why: &str) -> Problem {
    Problem::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "weak_password",
        format!("password refused: {why}; use a longer phrase of uncommon words, not your address"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADA: &str = "ada@example.com";

    fn refused(password: &str) -> bool {
        check_new_password(password, ADA).is_err()
    }

    #[test]
    fn common_and_weak_passwords_are_refused() {
        for weak in [
            "password",
            "12345678",
            "        ",
            "Password1",
            "qwertyuiop",
            "aaaaaaaaaaaa",
            "iloveyou123",
            "abcdefgh",
        ] {
            assert!(refused(weak), "{weak:?} was accepted");
        }
    }

    #[test]
    fn the_address_is_no_password() {
        for weak in [
            ADA,
            "ADA@EXAMPLE.COM",
            "ada@example.com1",
            "ada@example.com!!",
            "example.com",
            "adaexample123",
            "Ada.Example.2024",
        ] {
            assert!(refused(weak), "{weak:?} was accepted");
        }
        assert!(check_new_password("+4915112345678", "+4915112345678").is_err());
    }

    #[test]
    fn length_is_8_to_72_bytes() {
        let e = check_new_password("Zq8#", ADA).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert!(e.detail.contains("8 to 72 bytes"));
        assert!(check_new_password(&"Zq8#vL2!".repeat(10), ADA).is_err());
        let e = check_new_password("password", ADA).unwrap_err();
        assert_eq!(e.code, "weak_password");
    }

    #[test]
    fn strong_passwords_pass() {
        for strong in [
            "correct horse battery",
            "tangerine-lighthouse-47-quietly",
            "Zq8#vL2!mPw9",
            "vierzehn Kamele im Schnee",
        ] {
            assert!(
                check_new_password(strong, ADA).is_ok(),
                "{strong:?} was refused"
            );
        }
    }
}
