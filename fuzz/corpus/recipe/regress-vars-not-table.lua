return {
  name = "x",
  vars = "ubuntu_repo=http://x",
}
