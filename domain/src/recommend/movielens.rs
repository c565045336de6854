//! Parsers for the MovieLens exports, so real data can seed and benchmark the
//! system. They read text (`impl BufRead`), never files: the caller owns I/O.
//!
//! Supported: `movies.csv` + `ratings.csv` of ml-latest(-small)/ml-25m, and
//! `u.item` + `u.data` of ml-100k. Explicit ratings become implicit feedback:
//! every rating is a view, and a rating of at least [`LIKE_THRESHOLD`] is also
//! a like. MovieLens user `n` becomes [`UserId`] `u{n}`, matching the
//! synthetic generator's naming.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::ids::{MovieId, UserId};
use crate::recommend::{CatalogEntry, Dataset, InteractionKind};

/// Ratings at or above this (out of 5) count as likes.
pub const LIKE_THRESHOLD: f32 = 4.0;

/// ml-100k genre flag columns, in file order, with ml-latest spellings.
const U_ITEM_GENRES: [&str; 19] = [
    "",
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// A line that could not be parsed; `line` is 1-based, as editors show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct MovieLensError {
    /// 1-based line number in the input.
    pub line: usize,
    /// What was wrong with it.
    pub message: String,
}

impl MovieLensError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// One explicit rating as MovieLens records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// `u{MovieLens userId}`.
    pub user: UserId,
    /// MovieLens movieId.
    pub movie: MovieId,
    /// Stars, 0.5-5.
    pub rating: f32,
    /// Unix seconds.
    pub ts: i64,
}

impl Rating {
    /// Whether this rating also counts as a like.
    pub fn is_like(&self) -> bool {
        self.rating >= LIKE_THRESHOLD
    }
}

/// Lines of `input` with their 1-based numbers, decoded as UTF-8 or, failing
/// that, Latin-1 (ml-100k's `u.item` is Latin-1).
fn lines(input: impl BufRead) -> impl Iterator<Item = Result<(usize, String), MovieLensError>> {
    let mut input = input;
    let mut number = 0usize;
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        number += 1;
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let text = match String::from_utf8(buf) {
                    Ok(s) => s,
                    Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
                };
                // Spreadsheet exports may start with a byte-order mark.
                let text = match text.strip_prefix('\u{feff}') {
                    Some(rest) => rest.to_owned(),
                    None => text,
                };
                Some(Ok((number, text)))
            }
            Err(e) => Some(Err(MovieLensError::new(
                number,
                format!("read failed: {e}"),
            ))),
        }
    })
    .filter(|r| !matches!(r, Ok((_, text)) if text.trim().is_empty()))
}

/// Split one CSV record, honouring double quotes (titles contain commas and `""`).
fn csv_fields(line: &str, number: usize) -> Result<Vec<String>, MovieLensError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(MovieLensError::new(number, "unterminated quoted field"));
    }
    fields.push(field);
    Ok(fields)
}

fn movie_id(field: &str, number: usize) -> Result<MovieId, MovieLensError> {
    let n: i64 = field
        .trim()
        .parse()
        .map_err(|_| MovieLensError::new(number, format!("bad movie id {field:?}")))?;
    MovieId::parse(n).map_err(|e| MovieLensError::new(number, e.to_string()))
}

fn user_id(field: &str, number: usize) -> Result<UserId, MovieLensError> {
    let n: u64 = field
        .trim()
        .parse()
        .map_err(|_| MovieLensError::new(number, format!("bad user id {field:?}")))?;
    UserId::parse(format!("u{n}")).map_err(|e| MovieLensError::new(number, e.to_string()))
}

fn rating(field: &str, number: usize) -> Result<f32, MovieLensError> {
    field
        .trim()
        .parse::<f32>()
        .ok()
        .filter(|r| r.is_finite() && (0.0..=5.0).contains(r))
        .ok_or_else(|| MovieLensError::new(number, format!("bad rating {field:?}")))
}

fn timestamp(field: &str, number: usize) -> Result<i64, MovieLensError> {
    field
        .trim()
        .parse()
        .map_err(|_| MovieLensError::new(number, format!("bad timestamp {field:?}")))
}

/// `"Heat (1995)"` → (`"Heat"`, 1995); titles without a trailing year stay whole.
/// Ranges such as `(2006–2007)` give the first year.
fn split_title(raw: &str) -> (String, Option<i32>) {
    let title = raw.trim();
    if let Some(open) = title.rfind('(') {
        if title.ends_with(')') {
            let inner = &title[open + 1..title.len() - 1];
            let digits: String = inner.chars().take_while(char::is_ascii_digit).collect();
            if digits.len() == 4 {
                if let Ok(year) = digits.parse() {
                    return (title[..open].trim_end().to_owned(), Some(year));
                }
            }
        }
    }
    (title.to_owned(), None)
}

fn is_header(first_field: &str) -> bool {
    first_field.trim().parse::<i64>().is_err()
}

/// Parse ml-latest/ml-25m `movies.csv` (`movieId,title,genres`, header optional).
pub fn parse_movies_csv(input: impl BufRead) -> Result<Vec<CatalogEntry>, MovieLensError> {
    let mut out = Vec::new();
    for line in lines(input) {
        let (number, text) = line?;
        let fields = csv_fields(&text, number)?;
        if number == 1 && fields.first().is_some_and(|f| is_header(f)) {
            continue;
        }
        let [id, title, genres] = fields.as_slice() else {
            return Err(MovieLensError::new(
                number,
                format!("expected 3 fields, found {}", fields.len()),
            ));
        };
        let (title, year) = split_title(title);
        out.push(CatalogEntry {
            movie_id: movie_id(id, number)?,
            title,
            year,
            genres: genres
                .split('|')
                .map(str::trim)
                .filter(|g| !g.is_empty() && *g != "(no genres listed)")
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(out)
}

/// Stream ml-latest/ml-25m `ratings.csv` (`userId,movieId,rating,timestamp`, header optional);
/// streaming because ml-25m has 25M rows.
pub fn parse_ratings_csv(
    input: impl BufRead,
) -> impl Iterator<Item = Result<Rating, MovieLensError>> {
    lines(input).filter_map(|line| {
        let (number, text) = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let fields: Vec<&str> = text.split(',').collect();
        if number == 1 && fields.first().is_some_and(|f| is_header(f)) {
            return None;
        }
        Some(rating_row(&fields, number))
    })
}

fn rating_row(fields: &[&str], number: usize) -> Result<Rating, MovieLensError> {
    let [user, movie, stars, ts] = fields else {
        return Err(MovieLensError::new(
            number,
            format!("expected 4 fields, found {}", fields.len()),
        ));
    };
    Ok(Rating {
        user: user_id(user, number)?,
        movie: movie_id(movie, number)?,
        rating: rating(stars, number)?,
        ts: timestamp(ts, number)?,
    })
}

/// Parse ml-100k `u.item`: `id|title|release date|video date|url|` then 19 genre flags.
pub fn parse_u_item(input: impl BufRead) -> Result<Vec<CatalogEntry>, MovieLensError> {
    let mut out = Vec::new();
    for line in lines(input) {
        let (number, text) = line?;
        let fields: Vec<&str> = text.split('|').collect();
        if fields.len() != 5 + U_ITEM_GENRES.len() {
            return Err(MovieLensError::new(
                number,
                format!(
                    "expected {} fields, found {}",
                    5 + U_ITEM_GENRES.len(),
                    fields.len()
                ),
            ));
        }
        let (title, mut year) = split_title(fields[1]);
        if year.is_none() {
            // Release dates look like `01-Jan-1995`.
            year = fields[2]
                .rsplit('-')
                .next()
                .and_then(|y| y.trim().parse().ok());
        }
        let mut genres = Vec::new();
        for (flag, name) in fields[5..].iter().zip(U_ITEM_GENRES) {
            match flag.trim() {
                "1" if !name.is_empty() => genres.push(name.to_owned()),
                "0" | "1" => {}
                other => {
                    return Err(MovieLensError::new(
                        number,
                        format!("genre flag must be 0 or 1, found {other:?}"),
                    ))
                }
            }
        }
        out.push(CatalogEntry {
            movie_id: movie_id(fields[0], number)?,
            title,
            year,
            genres,
        });
    }
    Ok(out)
}

/// Stream ml-100k `u.data`: `user \t item \t rating \t timestamp`.
pub fn parse_u_data(input: impl BufRead) -> impl Iterator<Item = Result<Rating, MovieLensError>> {
    lines(input).map(|line| {
        let (number, text) = line?;
        let fields: Vec<&str> = text.split('\t').collect();
        rating_row(&fields, number)
    })
}

/// Turn ratings into implicit interactions: a view per rating, plus a like
/// (one second later, so "view then like" order holds) when rated ≥ [`LIKE_THRESHOLD`].
/// Stops at the first parse error.
pub fn ratings_to_dataset(
    ratings: impl IntoIterator<Item = Result<Rating, MovieLensError>>,
) -> Result<Dataset, MovieLensError> {
    let mut data = Dataset::new();
    for r in ratings {
        let r = r?;
        data.push(&r.user, r.movie, InteractionKind::View, r.ts);
        if r.is_like() {
            data.push(&r.user, r.movie, InteractionKind::Like, r.ts + 1);
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOVIES: &str = "\u{feff}movieId,title,genres\n\
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n\
11,\"American President, The (1995)\",Comedy|Drama|Romance\n\
99,\"Dr. \"\"Strangelove\"\" (1964)\",Comedy|War\n\
200,Babylon 5,(no genres listed)\r\n\
201,Fawlty Towers (1975-1979),Comedy\n";

    #[test]
    fn movies_csv_handles_quotes_years_and_missing_genres() {
        let movies = parse_movies_csv(MOVIES.as_bytes()).unwrap();
        assert_eq!(movies.len(), 5);
        assert_eq!(movies[0].title, "Toy Story");
        assert_eq!(movies[0].year, Some(1995));
        assert_eq!(movies[0].genres.len(), 5);
        assert_eq!(movies[1].movie_id, MovieId::parse(11).unwrap());
        assert_eq!(movies[1].title, "American President, The");
        assert_eq!(movies[1].genres, vec!["Comedy", "Drama", "Romance"]);
        assert_eq!(movies[2].title, "Dr. \"Strangelove\"");
        assert_eq!(movies[3].title, "Babylon 5");
        assert_eq!(movies[3].year, None);
        assert!(movies[3].genres.is_empty());
        assert_eq!(movies[4].year, Some(1975));
    }

    #[test]
    fn movies_csv_errors_name_the_line() {
        let err =
            parse_movies_csv("movieId,title,genres\n1,A (1990),Drama\n0,B,Drama\n".as_bytes())
                .unwrap_err();
        assert_eq!(err.line, 3);
        let err = parse_movies_csv("1,\"Open (1990),Drama\n".as_bytes()).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.to_string().starts_with("line 1: "), "{err}");
    }

    #[test]
    fn ratings_csv_becomes_views_and_likes() {
        let csv = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,3.5,964981247\n2,1,5,964982224\n";
        let ratings: Vec<Rating> = parse_ratings_csv(csv.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ratings.len(), 3);
        assert_eq!(ratings[0].user.as_str(), "u1");
        assert_eq!(ratings[1].rating, 3.5);
        assert!(ratings[0].is_like() && !ratings[1].is_like());

        let data = ratings_to_dataset(parse_ratings_csv(csv.as_bytes())).unwrap();
        assert_eq!(data.n_users(), 2);
        assert_eq!(data.n_items(), 2);
        let likes = data
            .interactions
            .iter()
            .filter(|i| i.kind == InteractionKind::Like)
            .count();
        assert_eq!((data.interactions.len(), likes), (5, 2));
    }

    #[test]
    fn ratings_errors_name_the_line() {
        let csv = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,x,3.5,964981247\n";
        let err = ratings_to_dataset(parse_ratings_csv(csv.as_bytes())).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("movie id"));
        let err = parse_ratings_csv("1,1,9,5\n".as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!((err.line, err.message.contains("rating")), (1, true));
    }

    #[test]
    fn u_item_reads_flags_dates_and_latin1() {
        let mut raw = b"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n".to_vec();
        raw.extend_from_slice(b"267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n");
        raw.extend_from_slice(b"1001|Walk in the Clouds (Un paseo por las nubes)|01-Jan-1995||x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0|0|0\n");
        raw.extend_from_slice(
            b"1300|'Til There Was You|01-Jan-1997||x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n",
        );
        raw.extend_from_slice(
            b"1302|Caf\xe9 au lait (1994)|01-Jan-1994||x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
        );
        let movies = parse_u_item(raw.as_slice()).unwrap();
        assert_eq!(movies.len(), 5);
        assert_eq!(movies[0].title, "Toy Story");
        assert_eq!(movies[0].genres, vec!["Animation", "Children", "Comedy"]);
        assert_eq!(movies[1].year, None);
        assert!(
            movies[1].genres.is_empty(),
            "the `unknown` flag is no genre"
        );
        assert_eq!(movies[2].year, Some(1995), "year from the release date");
        assert_eq!(movies[3].genres, vec!["Drama"]);
        assert_eq!(movies[4].title, "Café au lait");

        let err = parse_u_item("1|A|||x|0|1\n".as_bytes()).unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn u_data_is_tab_separated() {
        let data = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n244\t51\t2\t880606923\n166\t346\t5\t886397596\n";
        let ratings: Vec<Rating> = parse_u_data(data.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ratings.len(), 5);
        assert_eq!(ratings[0].user.as_str(), "u196");
        assert_eq!(ratings[0].movie.get(), 242);
        assert_eq!(ratings[4].rating, 5.0);
        assert_eq!(ratings[4].ts, 886_397_596);
        let err = parse_u_data("1\t2\t3\n".as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.line, 1);
    }
}
