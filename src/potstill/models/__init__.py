"""Local models shared by the local teacher and the student: loading, prompting, scoring."""
