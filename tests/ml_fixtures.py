"""Small MovieLens folders in each layout, written by the tests themselves (never real data).

Import from tests: ``from ml_fixtures import write_dat, write_100k, write_csv, write_jpeg``.
"""

from __future__ import annotations

from pathlib import Path

# (movie_id, title with year, genres); movie 3 has a Latin-1 title
MOVIES = [
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Jumanji (1995)", ["Adventure", "Children's", "Fantasy"]),
    (3, "Misérables, Les (1995)", ["Drama", "Musical"]),
    (4, "Heat (1995)", ["Action", "Crime", "Thriller"]),
    (5, "Café au Lait (1993)", ["Comedy"]),
]
USERS = [(1, "F", 1, 10, "48067"), (2, "M", 56, 16, "70072"), (3, "M", 25, 15, "55117")]
# (user, movie, rating, ts)
RATINGS = [
    (1, 1, 5, 978300760), (1, 2, 3, 978302109), (1, 3, 4, 978301968), (1, 5, 2, 978300275),
    (2, 1, 4, 978298413), (2, 4, 5, 978299000), (3, 3, 1, 978297867), (3, 4, 3, 978298709),
    (3, 5, 4, 978298000),
]


def write_dat(root: Path, *, extra_ratings: str = "", users: bool = True) -> Path:
    """ML-1M layout: '::' separated, movies.dat in Latin-1."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.dat").write_bytes(
        "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES).encode("latin-1"))
    if users:
        (root / "users.dat").write_text("".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in USERS))
    (root / "ratings.dat").write_text(
        "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS) + extra_ratings)
    return root


GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def write_100k(root: Path) -> Path:
    """ML-100K layout: u.data (tabs), u.item ('|', Latin-1, 19 genre flags), u.user, u.genre."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for m, t, g in MOVIES:
        flags = "|".join("1" if name in g else "0" for name in GENRES_100K)
        year = t[-5:-1]
        lines.append(f"{m}|{t}|01-Jan-{year}||http://us.imdb.com/M/title-exact?x|{flags}\n")
    # a movie with no year in its title: the release date gives it
    flags = "|".join("1" if name == "unknown" else "0" for name in GENRES_100K)
    lines.append(f"6|Untitled|05-Mar-1997||http://x|{flags}\n")
    (root / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    (root / "u.user").write_text("".join(f"{u}|{a}|{g}|writer|{z}\n" for u, g, a, o, z in USERS))
    (root / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    return root


def write_csv(root: Path) -> Path:
    """ML-20M/25M/32M/latest layout: quoted CSV with headers, UTF-8, links.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["movieId,title,genres"]
    for m, t, g in MOVIES:
        title = f'"{t}"' if "," in t else t
        rows.append(f"{m},{title},{'|'.join(g)}")
    rows.append('6,"Babylon 5",(no genres listed)')
    rows.append('7,"Fawlty Towers (1975-1979)",Comedy')
    (root / "movies.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{u},{m},{r - 0.5 if m == 4 else float(r)},{t}\n" for u, m, r, t in RATINGS))
    (root / "links.csv").write_text(
        "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n3,0113828,\n6,0105946,1234\n")
    return root


def write_jpeg(path: Path, size=(40, 60), color=(200, 30, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, color).save(path, "JPEG", quality=90)
    return path
