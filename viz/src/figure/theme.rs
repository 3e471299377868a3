//! The project's visual language: one colour per role, shared by figures and the desktop app.
//!
//! Images are always blue and texts always orange, so an embedding plot, a histogram of
//! image–text similarities and a live panel read the same way. Generic series (one per run,
//! per objective, per layer) take [`series_colour`] in order.

/// What a mark stands for; each role has one colour everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Image embeddings and anything from the vision tower: blue `#1f77b4`.
    #[default]
    Image,
    /// Text embeddings and anything from the text tower: orange `#ff7f0e`.
    Text,
    /// Matched pairs, correct predictions: green `#2ca02c`.
    Positive,
    /// Unmatched pairs, errors: red `#d62728`.
    Negative,
    /// Context, baselines, missing values: grey `#7f7f7f`.
    Neutral,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 5] = [
        Role::Image,
        Role::Text,
        Role::Positive,
        Role::Negative,
        Role::Neutral,
    ];

    /// The role's colour as `(r, g, b)`.
    pub fn rgb(self) -> (u8, u8, u8) {
        match self {
            Role::Image => (0x1f, 0x77, 0xb4),
            Role::Text => (0xff, 0x7f, 0x0e),
            Role::Positive => (0x2c, 0xa0, 0x2c),
            Role::Negative => (0xd6, 0x27, 0x28),
            Role::Neutral => (0x7f, 0x7f, 0x7f),
        }
    }
}

/// The ten-colour categorical palette generic series cycle through (Tableau 10).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
];

/// The colour of the `i`-th generic series; the palette repeats after ten.
pub fn series_colour(i: usize) -> (u8, u8, u8) {
    PALETTE[i % PALETTE.len()]
}

/// Light grey for grid lines, pair segments and frames.
pub(crate) const LIGHT_GREY: (u8, u8, u8) = (200, 200, 200);
/// Dark grey for frames and axes.
pub(crate) const DARK_GREY: (u8, u8, u8) = (90, 90, 90);
/// Black, for text.
pub(crate) const INK: (u8, u8, u8) = (0, 0, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_distinct_and_the_palette_cycles() {
        for (i, a) in Role::ALL.iter().enumerate() {
            for b in &Role::ALL[i + 1..] {
                assert_ne!(a.rgb(), b.rgb());
            }
        }
        assert_eq!(series_colour(0), series_colour(10));
        assert_eq!(Role::Image.rgb(), series_colour(0));
    }
}
