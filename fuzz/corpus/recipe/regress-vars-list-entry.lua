return {
  name = "x",
  vars = { "http://us.archive.ubuntu.com/ubuntu" },
}
