//! E.164 phone numbers.

/// Why a number is not E.164.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum E164Error {
    #[error("must be in E.164 form: '+' then 2 to 15 digits, e.g. +15555550001")]
    NoPlus,
    #[error("E.164 numbers have 2 to 15 digits after '+'")]
    Length,
    #[error("E.164 numbers hold only digits after '+' (no spaces, dashes or brackets)")]
    NotDigits,
    #[error("E.164 country codes never start with 0")]
    LeadingZero,
}

/// Checks that `s` is an E.164 number: `+`, a non-zero country-code digit, at most 15 digits in
/// all. Returns the reason when it is not.
pub fn check_e164(s: &str) -> Result<(), E164Error> {
    let Some(digits) = s.strip_prefix('+') else {
        return Err(E164Error::NoPlus);
    };
    if digits.len() < 2 || digits.len() > 15 {
        return Err(E164Error::Length);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(E164Error::NotDigits);
    }
    if digits.starts_with('0') {
        return Err(E164Error::LeadingZero);
    }
    Ok(())
}

/// Masks all but the last four digits, for logs: `+15555550001` → `+*******0001`.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    s.chars().enumerate().map(|(i, c)| if i == 0 && c == '+' || i + 4 >= n { c } else { '*' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_numbers() {
        for n in ["+15555550001", "+442071838750", "+12", "+123456789012345"] {
            assert_eq!(check_e164(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_numbers() {
        for n in [
            "",
            "15555550001",
            "+",
            "+1",
            "+0123456",
            "+1 555 555",
            "+1-555-5550",
            "+1234567890123456",
            "++15555550001",
            "+1555555000a",
        ] {
            assert!(check_e164(n).is_err(), "{n}");
        }
    }

    #[test]
    fn masks_all_but_last_four() {
        assert_eq!(mask("+15555550001"), "+*******0001");
        assert_eq!(mask("+12"), "+12");
    }
}
