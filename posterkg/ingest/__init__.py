"""Getting data in: MovieLens layouts (:mod:`.movielens`), poster folders (:mod:`.posters`),
GroupLens downloads (:mod:`.download`), poster fetching (:mod:`.fetch`) and the pipeline stage
(:mod:`.stage`)."""
