"""Operations support, apart from the algorithm: measuring a process, and keeping its heap small."""
