//! Profiles: how users present themselves to each other, and how they are found by name.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MediaId, UserId};

/// The longest display name, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
/// The longest bio, in characters (Instagram's limit).
pub const BIO_MAX_CHARS: usize = 150;
/// The shortest search prefix, in characters: a shorter one would match a large share of all users
/// and read a large share of the index (on ScyllaDB, the index is partitioned by its first two).
pub const SEARCH_MIN_CHARS: usize = 2;

/// A user's profile. A user who never set one has the defaults: no display name, bio or avatar,
/// public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user: UserId,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub avatar: Option<MediaId>,
    pub birthday: Option<Birthday>,
    pub private: bool,
}

impl Profile {
    /// The profile of a user who never set one.
    pub fn empty(user: UserId, username: String) -> Self {
        Self {
            user,
            username,
            display_name: String::new(),
            bio: String::new(),
            avatar: None,
            birthday: None,
            private: false,
        }
    }

    /// The keys that find this user in a search: see `search_keys`.
    pub fn search_keys(&self) -> Vec<String> {
        search_keys(&self.username, &self.display_name)
    }
}

/// A change to a profile: each `Some` replaces its field, each `None` leaves it as it is. Checked
/// (`services::profiles`) before it reaches the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar: Option<Option<MediaId>>,
    pub birthday: Option<Option<Birthday>>,
    pub private: Option<bool>,
}

impl ProfileChange {
    /// The profile with this change applied.
    pub fn apply(&self, mut profile: Profile) -> Profile {
        if let Some(name) = &self.display_name {
            profile.display_name = name.clone();
        }
        if let Some(bio) = &self.bio {
            profile.bio = bio.clone();
        }
        if let Some(avatar) = self.avatar {
            profile.avatar = avatar;
        }
        if let Some(birthday) = self.birthday {
            profile.birthday = birthday;
        }
        if let Some(private) = self.private {
            profile.private = private;
        }
        profile
    }
}

/// A calendar date, written "YYYY-MM-DD".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Birthday {
    year: u16,
    month: u8,
    day: u8,
}

impl Birthday {
    /// From "YYYY-MM-DD", a real date from year 1900 on; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<u16> {
            let part = &text[range];
            part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (year >= 1900 && (1..=days).contains(&day)).then_some(Self { year, month: month as u8, day: day as u8 })
    }

    /// The UTC date at `ms` since the epoch.
    pub fn of_time_ms(ms: i64) -> Self {
        // Howard Hinnant's civil_from_days.
        let z = ms.div_euclid(86_400_000) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        Self { year, month, day }
    }
}

impl fmt::Display for Birthday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Debug for Birthday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Birthday({self})")
    }
}

impl Serialize for Birthday {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Birthday {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Birthday::parse(&text).ok_or_else(|| serde::de::Error::custom("a birthday is YYYY-MM-DD"))
    }
}

/// Text as searches compare it: lower case, words separated by one space.
pub fn search_key(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// The keys under which a user is found: the username, the whole display name, and the display
/// name from each later word on ("ana maria silva" is found by "ana", "maria" and "silva").
pub fn search_keys(username: &str, display_name: &str) -> Vec<String> {
    let mut keys = vec![search_key(username)];
    let name = search_key(display_name);
    let mut rest = name.as_str();
    while !rest.is_empty() {
        keys.push(rest.to_owned());
        rest = rest.split_once(' ').map_or("", |(_, after)| after);
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The part of a search key that names its partition in a partitioned index: its first
/// `SEARCH_MIN_CHARS` characters (or all of a shorter key).
pub fn search_key_head(key: &str) -> &str {
    key.char_indices().nth(SEARCH_MIN_CHARS).map_or(key, |(at, _)| &key[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birthdays_are_real_dates() {
        assert_eq!(Birthday::parse("2000-02-29").unwrap().to_string(), "2000-02-29");
        for bad in ["1900-02-29", "2001-02-29", "2001-13-01", "2001-00-10", "2001-04-31", "1899-12-31", "2001-1-01"] {
            assert_eq!(Birthday::parse(bad), None, "{bad}");
        }
        assert_eq!(Birthday::parse("+001-01-01"), None);
        assert_eq!(Birthday::of_time_ms(0).to_string(), "1970-01-01");
        assert_eq!(Birthday::of_time_ms(951_782_400_000).to_string(), "2000-02-29");
        assert_eq!(Birthday::of_time_ms(1_796_601_599_999).to_string(), "2026-12-06");
    }

    #[test]
    fn users_are_found_by_username_and_by_each_word_of_their_name() {
        assert_eq!(
            search_keys("ana_s", "  Ana   María Silva "),
            vec!["ana maría silva", "ana_s", "maría silva", "silva"]
        );
        assert_eq!(search_keys("bo", ""), vec!["bo"]);
        assert_eq!(search_key_head("maría silva"), "ma");
        assert_eq!(search_key_head("é"), "é");
        assert_eq!(search_key_head("éa"), "éa");
    }
}
